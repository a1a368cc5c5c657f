"""gateway/refusals.py: refused requests cannot fill the log (a pure clock is passed in)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pony_scheduler.gateway.refusals import MAX_PATH, RefusalLog, shown_path


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_paths_are_cut(caplog: pytest.LogCaptureFixture) -> None:
    assert shown_path("/api/jobs") == "/api/jobs"
    long = "/" + "a" * 8191
    assert shown_path(long) == "/" + "a" * (MAX_PATH - 1) + "… (7992 more characters)"


def test_a_few_lines_per_address_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    refusals = RefusalLog(logging.getLogger("test.refusals"), burst=3, window=60.0)
    for second in range(100):
        refusals.refused(float(second) / 10, "127.0.0.1", "Refused %s", second)
    refusals.refused(5.0, "::1", "Refused other")
    assert messages(caplog) == ["Refused 0", "Refused 1", "Refused 2", "Refused other"]
    refusals.flush(59.0)  # the minute is not over
    assert len(caplog.records) == 4
    refusals.flush(61.0)
    assert messages(caplog)[4:] == [
        "97 more refused requests from 127.0.0.1 in the last minute"
    ]  # ::1 used none of its lines beyond: no summary
    refusals.refused(62.0, "127.0.0.1", "Refused again")  # a new minute
    assert messages(caplog)[-1] == "Refused again"


def test_addresses_beyond_the_limit_share_one_count(caplog: pytest.LogCaptureFixture) -> None:
    """127.0.0.0/8 is all loopback: sixteen million addresses are not told apart."""
    caplog.set_level(logging.WARNING)
    refusals = RefusalLog(logging.getLogger("test.refusals"), burst=1, window=60.0, max_addresses=4)
    for host in range(1000):
        refusals.refused(1.0, f"127.0.{host // 256}.{host % 256}", "Refused %d", host)
    assert len(caplog.records) == 5  # four addresses, then the others together
    refusals.flush(100.0)
    assert (
        messages(caplog)[-1] == "995 more refused requests from other addresses in the last minute"
    )


def test_an_unusable_sqlite_database_points_at_the_disk_not_a_server(tmp_path: Path) -> None:
    """On a full filesystem SQLite says "disk I/O error" (it cannot grow its -shm file,
    even to read); the advice was to check "that the database server is running"."""
    from sqlite3 import OperationalError

    from pony_scheduler.store.store import _unusable

    sqlite = str(_unusable(f"sqlite:///{tmp_path}/pony.db", OperationalError("disk I/O error")))
    assert "disk I/O error; check that its filesystem has free space (df)" in sqlite
    assert "server" not in sqlite
    server = str(_unusable("postgresql+psycopg://u@h/db", OperationalError("refused")))
    assert "that the database server is running" in server
