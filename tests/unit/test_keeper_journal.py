"""The outcome journal: its format, recovery from a torn write, group commit through the
sync helper, failures that keep outcomes in memory, and compaction."""

from __future__ import annotations

import errno
import os
import select
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pony_scheduler.keeper import commit
from pony_scheduler.keeper.commit import Journal, SyncHelper
from pony_scheduler.keeper.journal import (
    JournalFile,
    ack_line,
    outcome_line,
    parse,
    read_journal,
)
from pony_scheduler.keeper.protocol import Outcome


def outcome(n: int) -> Outcome:
    return Outcome(
        id=f"k-{n}",
        run_id=n,
        token="",
        ending="exited",
        exit_code=n % 256,
        signal=None,
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:01.000Z",
        detail=f"exit status {n}",
        output_path=f"/h/runs/j/{n}.log",
        output_bytes=0,
        output_note="",
        tail=bytes([n % 256]) * 3,
        leftovers=0,
        leftovers_kept=False,
        peak_memory_bytes=None,
        cpu_seconds=None,
        containment="pgroup",
    )


@pytest.fixture
def home_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def journal_bytes(tmp_path: Path) -> bytes:
    return (tmp_path / "keeper.journal").read_bytes()


# ------------------------------------------------------------------ the file
def test_parse_pending_outcomes() -> None:
    data = (
        outcome_line(outcome(1))
        + outcome_line(outcome(2))
        + ack_line(["k-1", "k-9"])
        + outcome_line(outcome(2))
        + b"this is not json\n"
        + outcome_line(outcome(3))
    )
    found = parse(data)
    assert [o.id for o in found.outcomes] == ["k-2", "k-3"]  # k-2 written twice: once
    assert (found.acked, found.bad_lines, found.torn) == (1, 1, False)
    assert found.outcomes[0] == outcome(2)


def test_a_line_from_before_the_duration_field_is_read() -> None:
    """A journal written by an older keeper (no duration_s) is still read after an
    upgrade: its outcomes are recorded, not dropped as bad lines."""
    line = outcome_line(outcome(1))
    assert b'"duration_s":null' in line
    found = parse(line.replace(b',"duration_s":null', b""))
    assert (found.outcomes, found.bad_lines) == ([outcome(1)], 0)
    timed = replace(outcome(2), duration_s=0.25)
    assert parse(outcome_line(timed)).outcomes == [timed]


def test_a_torn_last_line_is_ignored_then_cut(tmp_path: Path, home_fd: int) -> None:
    whole = outcome_line(outcome(1))
    (tmp_path / "keeper.journal").write_bytes(whole + outcome_line(outcome(2))[:30])
    assert read_journal(tmp_path) == [outcome(1)]
    found = JournalFile(home_fd).recover()
    assert found.torn and found.good_size == len(whole)
    assert journal_bytes(tmp_path) == whole


def test_recovery_drops_acknowledged_outcomes(tmp_path: Path, home_fd: int) -> None:
    (tmp_path / "keeper.journal").write_bytes(
        outcome_line(outcome(1)) + outcome_line(outcome(2)) + ack_line(["k-1"])
    )
    JournalFile(home_fd).recover()
    assert journal_bytes(tmp_path) == outcome_line(outcome(2))
    (tmp_path / "keeper.journal").write_bytes(outcome_line(outcome(1)) + ack_line(["k-1"]))
    JournalFile(home_fd).recover()
    assert journal_bytes(tmp_path) == b""


def test_no_journal_reads_as_nothing(tmp_path: Path) -> None:
    assert read_journal(tmp_path) == []


# ------------------------------------------------------------------ group commit
class CountingHelper:
    """Stands in for SyncHelper: counts requests, answers when told."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int]] = []
        self.rep = -1

    def request(self, generation: int, offset: int) -> None:
        self.requests.append((generation, offset))

    def close(self) -> None:
        pass


def test_one_write_and_one_sync_for_a_pass(
    tmp_path: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = CountingHelper()
    journal = Journal(JournalFile(home_fd), helper)  # type: ignore[arg-type]
    writes: list[int] = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(fd) or real_write(fd, data))
    for n in (1, 2, 3):
        journal.add(outcome(n))
    journal.flush(0.0)
    assert writes == [journal.file.fd]  # one write(2) for three outcomes
    assert helper.requests == [(0, journal.size)]  # one sync asked
    assert journal.waiting == {"k-1", "k-2", "k-3"}
    journal.add(outcome(4))
    journal.flush(0.0)
    assert len(helper.requests) == 1  # one sync in flight: the next one waits for it
    journal.helper.replies = lambda: [(0, helper.requests[0][1])]  # type: ignore[union-attr]
    journal.answers()
    assert journal.waiting == {"k-4"}  # written after the sync began
    assert len(helper.requests) == 2  # ...so the next sync is asked at once
    assert read_journal(tmp_path) == [outcome(n) for n in (1, 2, 3, 4)]


def test_the_real_helper_makes_outcomes_durable(tmp_path: Path, home_fd: int) -> None:
    journal = Journal(JournalFile(home_fd), SyncHelper(home_fd))
    try:
        for n in range(10):
            journal.add(outcome(n))
        journal.flush(0.0)
        fd = journal.fileno()
        assert fd is not None
        while journal.waiting:
            assert select.select([fd], [], [], 30)[0], "the helper did not answer"
            journal.answers()
        assert journal.error == "" and journal.synced == journal.size
    finally:
        journal.close(all_acked=False)
    assert len(read_journal(tmp_path)) == 10


def test_without_a_helper_the_loop_syncs(home_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    monkeypatch.setattr(os, "fdatasync", syncs.append)
    journal = Journal(JournalFile(home_fd), None)
    for n in (1, 2):
        journal.add(outcome(n))
    journal.flush(0.0)
    assert syncs == [journal.file.fd] and not journal.waiting


def test_acknowledged_before_written_is_never_written(tmp_path: Path, home_fd: int) -> None:
    journal = Journal(JournalFile(home_fd), None)
    journal.add(outcome(1))
    journal.add(outcome(2))
    journal.ack(["k-1"], pending_left=1)
    journal.flush(0.0)
    assert journal_bytes(tmp_path) == outcome_line(outcome(2))
    journal.ack(["k-2"], pending_left=0)  # written already: an ack line follows it
    journal.flush(0.0)
    assert journal_bytes(tmp_path) == outcome_line(outcome(2)) + ack_line(["k-2"])
    assert read_journal(tmp_path) == []


def test_a_full_disk_keeps_outcomes_until_they_can_be_written(
    tmp_path: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(JournalFile(home_fd), None)
    real_append = journal.file.append

    def full(data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal.file, "append", full)
    journal.add(outcome(1))
    journal.flush(100.0)
    assert journal.error == "No space left on device" and journal.waiting == {"k-1"}
    assert journal.retry_at == 100.0 + commit.JOURNAL_RETRY_S
    monkeypatch.setattr(journal.file, "append", real_append)
    journal.flush(100.5)  # not yet: retries wait their turn
    assert journal.waiting == {"k-1"}
    journal.flush(101.0)
    assert journal.error == "" and not journal.waiting
    assert read_journal(tmp_path) == [outcome(1)]


def test_a_failed_sync_writes_the_lines_again(tmp_path: Path, home_fd: int) -> None:
    helper = CountingHelper()
    journal = Journal(JournalFile(home_fd), helper)  # type: ignore[arg-type]
    journal.add(outcome(1))
    journal.flush(0.0)
    journal.helper.replies = lambda: [(0, -errno.EIO)]  # type: ignore[union-attr]
    journal.answers()
    assert journal.error == "Input/output error" and journal.waiting == {"k-1"}
    assert journal_bytes(tmp_path) == b""  # cut back to what was last durable
    assert journal.retry_at is not None
    journal.flush(journal.retry_at)
    assert journal_bytes(tmp_path) == outcome_line(outcome(1))
    assert helper.requests[-1] == (1, journal.size)  # a new generation asks again


def test_compaction(tmp_path: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit, "TRUNCATE_BYTES", 100)
    monkeypatch.setattr(commit, "COMPACT_BYTES", 1000)
    journal = Journal(JournalFile(home_fd), None)
    for n in range(5):
        journal.add(outcome(n))
    journal.flush(0.0)
    journal.ack([f"k-{n}" for n in range(4)], pending_left=1)
    journal.flush(0.0)
    assert journal.size > 1000
    journal.compact([outcome(4)])
    assert journal_bytes(tmp_path) == outcome_line(outcome(4))
    journal.ack(["k-4"], pending_left=0)  # all acknowledged and bigger than 100: start over
    assert journal_bytes(tmp_path) == b""
    journal.close(all_acked=True)


def test_a_dead_helper_leaves_the_syncing_to_the_loop(tmp_path: Path, home_fd: int) -> None:
    helper = SyncHelper(home_fd)
    journal = Journal(JournalFile(home_fd), helper)
    os.kill(helper.pid, signal.SIGKILL)  # our own child, not reaped yet: its pid is its own
    os.waitpid(helper.pid, 0)
    journal.add(outcome(1))
    journal.flush(0.0)  # the request may go into the pipe before the death is noticed
    fd = journal.fileno()
    if fd is not None:
        assert select.select([fd], [], [], 30)[0]
        journal.answers()
    assert journal.helper is None and journal.helper_lost
    assert not journal.waiting and read_journal(tmp_path) == [outcome(1)]
    journal.close(all_acked=False)


def test_syncs_come_at_most_once_per_window(tmp_path: Path, home_fd: int) -> None:
    helper = CountingHelper()
    journal = Journal(JournalFile(home_fd), helper, window_s=0.02)  # type: ignore[arg-type]
    journal.add(outcome(1))
    journal.flush(10.0)
    assert len(helper.requests) == 1  # the first at once
    journal.helper.replies = lambda: [(0, helper.requests[-1][1])]  # type: ignore[union-attr]
    journal.answers(10.005)
    journal.add(outcome(2))
    journal.flush(10.01)
    assert len(helper.requests) == 1 and journal.sync_at == pytest.approx(10.02)
    journal.flush(10.02)  # the loop's timer: the window is over
    assert len(helper.requests) == 2 and journal.sync_at is None


def test_acknowledgements_alone_ask_for_no_sync(tmp_path: Path, home_fd: int) -> None:
    helper = CountingHelper()
    journal = Journal(JournalFile(home_fd), helper, window_s=0.0)  # type: ignore[arg-type]
    journal.add(outcome(1))
    journal.flush(0.0)
    journal.helper.replies = lambda: [(0, helper.requests[-1][1])]  # type: ignore[union-attr]
    journal.answers(0.0)
    assert not journal.waiting and len(helper.requests) == 1
    journal.ack(["k-1"], pending_left=0)
    journal.flush(1.0)
    assert journal_bytes(tmp_path).endswith(ack_line(["k-1"]))  # written...
    assert len(helper.requests) == 1 and journal.sync_at is None  # ...not synced for itself
    journal.add(outcome(2))
    journal.flush(2.0)  # the next outcome's sync covers the ack line too
    assert helper.requests[-1] == (0, journal.size)


def test_a_failing_write_neither_spins_nor_holds_back_an_earlier_sync(
    tmp_path: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outcome written inside the sync window, then the disk is full: the written
    line still gets its sync when the window ends, and no timer is left in the past
    (the loop would poll without waiting)."""
    helper = CountingHelper()
    journal = Journal(JournalFile(home_fd), helper, window_s=0.02)  # type: ignore[arg-type]
    journal.add(outcome(1))
    journal.flush(10.0)
    journal.helper.replies = lambda: [(0, helper.requests[-1][1])]  # type: ignore[union-attr]
    journal.answers(10.001)
    journal.add(outcome(2))
    journal.flush(10.01)  # written; its sync waits for the window
    assert journal.sync_at == pytest.approx(10.02) and len(helper.requests) == 1

    def full(data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal.file, "append", full)
    journal.add(outcome(3))
    journal.flush(10.015)
    assert journal.error == "No space left on device"
    for now in (10.03, 10.5, 10.9):
        journal.flush(now)
        assert journal.sync_at is None or journal.sync_at > now
    assert helper.requests[-1] == (0, len(outcome_line(outcome(1))) + len(outcome_line(outcome(2))))
    assert journal.waiting == {"k-2", "k-3"}  # k-2 durable once the helper answers
