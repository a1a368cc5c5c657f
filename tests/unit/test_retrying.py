"""recovery.retrying: a short database write tried again, and never past a deadline (a
stop on a database that stays locked or down gives up in time: scheduler/loop.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy.exc import OperationalError

from pony_scheduler.scheduler import recovery


def _failing(calls: list[int], succeed_on: int | None = None) -> Callable[[], str]:
    def action() -> str:
        calls.append(1)
        if succeed_on is not None and len(calls) >= succeed_on:
            return "done"
        raise OperationalError("UPDATE runs", {}, Exception("database is locked"))

    return action


def test_a_hiccup_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "pause", lambda s: None)
    calls: list[int] = []
    assert recovery.retrying(_failing(calls, succeed_on=3)) == "done"
    assert len(calls) == 3


def test_no_attempt_starts_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "pause", lambda s: None)
    calls: list[int] = []
    with pytest.raises(OperationalError):
        recovery.retrying(_failing(calls), deadline=time.monotonic() - 1)
    assert len(calls) == 1  # the first attempt is always made


def test_without_a_deadline_it_gives_up_after_its_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "pause", lambda s: None)
    calls: list[int] = []
    with pytest.raises(OperationalError):
        recovery.retrying(_failing(calls), attempts=4)
    assert len(calls) == 4
