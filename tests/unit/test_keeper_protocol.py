"""The keeper's wire format: records survive encoding exactly, bad input is refused."""

from __future__ import annotations

import os
import signal
from datetime import UTC

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pony_scheduler.keeper.protocol import (
    Launch,
    Outcome,
    ProtocolError,
    Refused,
    Started,
    signal_name,
    signal_number,
)
from pony_scheduler.keeper.wire import (
    decode,
    encode,
    event_from_json,
    launch_from_json,
    launch_to_json,
    outcome_from_json,
    outcome_to_json,
    started_to_json,
)


def outcome(**changes: object) -> Outcome:
    fields: dict[str, object] = dict(
        id="k-1",
        run_id=7,
        token="epoch-3",
        ending="exited",
        exit_code=0,
        signal=None,
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:01.500Z",
        detail="exit status 0",
        output_path="/h/runs/j/7.log",
        output_bytes=3,
        output_note="",
        tail=b"a\x00\xff",
        leftovers=0,
        leftovers_kept=False,
        peak_memory_bytes=None,
        cpu_seconds=0.25,
        containment="cgroup2",
        pid=42,
        pid_start=123,
        duration_s=1.5,
    )
    fields.update(changes)
    return Outcome(**fields)  # type: ignore[arg-type]


def wire(message: dict[str, object]) -> dict[str, object]:
    """Through the bytes a socket carries."""
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return decode(line[:-1])


def test_launch_round_trip_with_bytes_that_are_not_utf8() -> None:
    odd = os.fsdecode(b"caf\xe9\xff")  # a Latin-1 file name, carried by surrogateescape
    launch = Launch(
        5,
        ("/bin/echo", odd, "x\ty"),
        "/h/runs/j/5.log",
        env={"PATH": "/bin", "NAME": odd},
        token="t",
        cwd="/tmp",
        umask=0o077,
        timeout_s=1.5,
        leftovers="keep",
        memory_max=1 << 20,
        cpu_max=0.5,
        tasks_max=10,
    )
    back = launch_from_json(wire(launch_to_json(launch)))
    assert back == launch
    assert os.fsencode(back.argv[1]) == b"caf\xe9\xff"


@given(st.binary(max_size=5000), st.text(max_size=50))
def test_outcome_round_trip(tail: bytes, detail: str) -> None:
    sent = outcome(tail=tail, detail=detail)
    assert outcome_from_json(wire(outcome_to_json(sent))) == sent


def test_events_and_replies() -> None:
    started = Started(1, "t", 42, 99, "2026-01-01T00:00:00.000Z", "/h/runs/j/1.log", "pgroup")
    assert event_from_json(wire(started_to_json(started))) == started
    assert event_from_json(
        {"type": "refused", "run_id": 3, "token": "t", "reason": "held"}
    ) == Refused(3, "t", "held")
    assert event_from_json({"type": "status", "pid": 1}) is None  # a reply, not an event


@pytest.mark.parametrize(
    "line", [b"", b"not json", b"[1, 2]", b'{"no": "type"}', b'{"type": 3}', b"\xff\xfe"]
)
def test_junk_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(line)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "launch"},
        {"type": "launch", "run_id": 1, "argv": "true", "output_path": "/x"},
        {"type": "launch", "run_id": 0, "argv": ["true"], "output_path": "/x"},
        {"type": "launch", "run_id": 1, "argv": ["true"], "output_path": "relative"},
        {"type": "launch", "run_id": 1, "argv": ["true"], "output_path": "/x", "env": {"A=B": "c"}},
        {"type": "launch", "run_id": 1, "argv": ["true"], "output_path": "/x", "umask": 0o1000},
        {"type": "launch", "run_id": 1, "argv": ["a\0b"], "output_path": "/x"},
        {"type": "launch", "run_id": True, "argv": ["true"], "output_path": "/x"},
    ],
)
def test_bad_launches_are_refused(message: dict[str, object]) -> None:
    with pytest.raises(ProtocolError, match="bad launch"):
        launch_from_json(message)


def test_bad_outcomes_are_refused() -> None:
    good = outcome_to_json(outcome())
    for key, value in [
        ("ending", "vanished"),
        ("run_id", "7"),
        ("tail", "!!!"),
        ("duration_s", -1.0),
        ("duration_s", "1.5"),
        ("duration_s", True),
    ]:
        with pytest.raises(ProtocolError, match="bad outcome"):
            outcome_from_json({**good, key: value})


def test_an_outcome_without_a_duration_is_an_older_keepers() -> None:
    """The monotonic duration came within PROTOCOL 1: an older keeper's outcome has none,
    and reads as None (the scheduler then goes by the wall-clock times)."""
    older = outcome_to_json(outcome())
    del older["duration_s"]
    assert outcome_from_json(older) == outcome(duration_s=None)
    assert outcome_from_json({**older, "duration_s": 3}).duration_s == 3.0


def test_signals_by_name_or_number() -> None:
    for spelling in ("TERM", "SIGTERM", "sigterm", " term ", 15, "15"):
        assert signal_number(spelling) == signal.SIGTERM
    assert signal_name(9) == "SIGKILL"
    for bad in ("SIGNOPE", 0, 1000, "-1"):
        with pytest.raises(ValueError):
            signal_number(bad)


def test_limits_listed() -> None:
    assert Launch(1, ("true",), "/x").limits == {}
    assert Launch(1, ("true",), "/x", memory_max=5, cpu_max=1.5).limits == {
        "memory_max": 5,
        "cpu_max": 1.5,
    }


def test_iso_utc_across_seconds() -> None:
    """Times in the protocol: the same text as a fresh formatting, whichever second the
    previous call formatted (the keeper keeps the last one's text)."""
    from datetime import datetime

    from pony_scheduler.keeper.protocol import iso_utc

    for t in (1714564800.123, 1714564800.999, 1714564801.0, 1714564800.5, -0.5, 0.0, 59.0015):
        expected = datetime.fromtimestamp(t // 1, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert iso_utc(t) == f"{expected}.{int(t * 1000) % 1000:03d}Z"


def test_a_reason_shows_a_byte_that_is_not_utf8_as_x() -> None:
    """`cannot start 'printf\\udc9b31m'` in a run's reason (review finding)."""
    import os

    from pony_scheduler.keeper.execpath import shown

    assert shown(os.fsdecode(b"printf\x9b31m")) == "'printf\\x9b31m'"
    assert shown("a\x1bb") == "'a\\x1bb'" and shown("x\\udc9b") == "'x\\\\udc9b'"
