"""How the running keeper writes its journal: group commit, the sync off the loop.

The loop appends the lines of a pass (its outcomes, its acks) with one write(2) into the
page cache; durability comes from fdatasync(2), which takes milliseconds on a busy disk -
longer than starting `true` - so the loop never makes that call itself.  A helper process
forked at start (SyncHelper: no thread, no GIL, a few lines of code) does it on request
and answers with the offset it made durable.  At most one sync is in flight; what the
loop writes meanwhile is covered by the next one, and a sync is asked at most once per
SYNC_WINDOW_S (PostgreSQL's commit_delay, on the keeper's side): under load one sync
covers many outcomes (never one per run); when the runs are slow there is one per
outcome, within SYNC_WINDOW_S.  Each sync costs the disk and a core more than a trivial
run does, so the window is what keeps `true` in a loop from being paced by fdatasync.

An outcome goes to the scheduler at once and counts as durable when a sync covers its
line; the keeper does not exit while any is not.  Acks are not synced for their own
sake: an ack lost in a crash only replays outcomes the scheduler has recorded already,
which it must ignore (it records a run's outcome only while the run is still running
with that token).  An outcome acknowledged before its line was written is never written.

Failures: a write error (a full disk, EIO) cuts the file back to its last good size, keeps
the lines in memory and retries every JOURNAL_RETRY_S; a sync error cuts the file back
to what was last made durable and writes the lines again.  Nothing is dropped; status
and the log say what waits.  Without a helper (it died) the loop syncs itself.

Compaction: once everything is acknowledged and the file is bigger than TRUNCATE_BYTES it
is truncated (a truncate is a journaled metadata change, as costly as the sync: not after
every run); beyond COMPACT_BYTES with outcomes still pending it is rewritten with only
those (temporary file, fsync, rename, fsync of the directory).  At exit an
all-acknowledged journal is emptied.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time

from pony_scheduler.keeper.journal import JournalFile, ack_line, outcome_line
from pony_scheduler.keeper.protocol import JOURNAL_FILE, Outcome

JOURNAL_RETRY_S = 1.0
SYNC_WINDOW_S = 0.02  # at most one sync asked per window: outcomes durable within ~20 ms
TRUNCATE_BYTES = 256 * 1024
COMPACT_BYTES = 4 * 1024 * 1024
_RECORD = struct.Struct("=qq")  # (generation, offset) asked; (generation, offset or -errno)


class SyncHelper:
    """A forked process that fdatasyncs keeper.journal on request."""

    def __init__(self, home_fd: int) -> None:
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child)
            code = 0
            try:
                _helper(home_fd, req_r, rep_w)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(req_r)
        os.close(rep_w)
        os.set_blocking(rep_r, False)
        self.pid = pid
        self.req = req_w
        self.rep = rep_r
        self.buf = b""

    def request(self, generation: int, offset: int) -> None:
        os.write(self.req, _RECORD.pack(generation, offset))

    def replies(self) -> list[tuple[int, int]] | None:
        """Answers that arrived; None when the helper is gone."""
        gone = False
        while True:
            try:
                data = os.read(self.rep, 4096)
            except BlockingIOError:
                break
            if not data:
                gone = True
                break
            self.buf += data
        n = len(self.buf) // _RECORD.size * _RECORD.size
        answers = [_RECORD.unpack_from(self.buf, i) for i in range(0, n, _RECORD.size)]
        self.buf = self.buf[n:]
        return None if gone and not answers else answers

    def close(self) -> None:
        for fd in (self.req, self.rep):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _helper(home_fd: int, req: int, rep: int) -> None:  # pragma: no cover (child)
    """The helper's whole life: sync on request until the keeper closes the pipe.  It
    opens the journal by name each time, so a rewritten journal is the one synced."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    keep = sorted({0, 1, 2, home_fd, req, rep})
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 65536)
    buf = b""
    while True:
        data = os.read(req, 4096)
        if not data:
            return
        buf += data
        n = len(buf) // _RECORD.size * _RECORD.size
        if not n:
            continue
        generation, offset = _RECORD.unpack_from(buf, n - _RECORD.size)  # the latest asked
        buf = buf[n:]
        try:
            fd = os.open(JOURNAL_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=home_fd)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            offset = -(exc.errno or 5)
        os.write(rep, _RECORD.pack(generation, offset))


class Journal:
    """The loop's side of the journal (single-threaded)."""

    def __init__(
        self, file: JournalFile, helper: SyncHelper | None, window_s: float = SYNC_WINDOW_S
    ) -> None:
        self.file = file
        self.window_s = window_s
        self.last_ask = float("-inf")  # monotonic time of the last sync asked
        self.sync_at: float | None = None  # a sync waits for its window: ask then
        self.helper = helper
        self.queue: list[tuple[str | None, bytes]] = []  # not written yet
        self.written: list[tuple[str | None, bytes, int]] = []  # written, not synced: end
        self.waiting: set[str] = set()  # outcome ids not durable yet
        self.synced = file.size
        self.generation = 0
        self.in_flight = False
        self.error = ""  # the current write/sync error, while lines wait
        self.retry_at: float | None = None
        self.helper_lost = False  # for the log: the helper died, the loop syncs itself

    @property
    def size(self) -> int:
        return self.file.size

    def fileno(self) -> int | None:
        return self.helper.rep if self.helper else None

    def add(self, outcome: Outcome, message: bytes | None = None) -> None:
        """Queue `outcome` (`message`: its protocol line, if already encoded)."""
        self.waiting.add(outcome.id)
        self.queue.append((outcome.id, outcome_line(outcome, message)))

    def ack(self, ids: list[str], pending_left: int) -> None:
        """Forget `ids`; `pending_left` outcomes remain unacknowledged."""
        gone = set(ids)
        unwritten = {i for i, _ in self.queue if i in gone}
        self.queue = [(i, line) for i, line in self.queue if i not in gone]
        self.waiting -= gone
        if pending_left == 0 and self.file.size > TRUNCATE_BYTES:
            self._start_over()
            return
        written = [i for i in ids if i not in unwritten]
        if written:
            self.queue.append((None, ack_line(written)))

    def _start_over(self) -> None:
        """Everything is acknowledged: lines still queued or unsynced are moot."""
        self.queue.clear()
        self.written.clear()
        self.file.truncate()
        self.synced = 0
        self.generation += 1  # an answer for the old content means nothing now
        self.in_flight = False

    def flush(self, now: float) -> None:
        """End of a loop pass: write what is queued (one write) unless a failed write
        waits for its retry, and ask for a sync of what is written but not durable (also
        while a write waits: lines written before it still need their sync)."""
        if self.retry_at is None or now >= self.retry_at:
            self.retry_at = None
            if self.queue:
                self._write_queue(now)
        self._sync_when_due(now)

    def _write_queue(self, now: float) -> None:
        try:
            self.file.append(b"".join(line for _, line in self.queue))
        except OSError as exc:
            self._failed(exc.strerror or str(exc), now)
            return
        end = self.file.size - sum(len(line) for _, line in self.queue)
        for outcome_id, line in self.queue:
            end += len(line)
            self.written.append((outcome_id, line, end))
        self.queue.clear()

    def _sync_when_due(self, now: float) -> None:
        """Ask for a sync if one is needed and none is in flight, at once or - within
        SYNC_WINDOW_S of the last one - when the window ends (sync_at: the loop's timer)."""
        self.sync_at = None
        if self.in_flight or not self._needs_sync():
            return
        due = self.last_ask + self.window_s
        if now < due:
            self.sync_at = due
            return
        self.last_ask = now
        self._ask_sync()

    def _ask_sync(self) -> None:
        if self.helper is not None:
            try:
                self.helper.request(self.generation, self.file.size)
                self.in_flight = True
                return
            except OSError:
                self._lose_helper()
        try:  # no helper: sync here, blocking the loop (the helper died)
            os.fdatasync(self.file.fd)
        except OSError as exc:
            self._sync_failed(exc.strerror or str(exc))
            return
        self._synced(self.file.size)

    def answers(self, now: float | None = None) -> None:
        """The helper answered (its pipe is readable); `now`: time.monotonic()."""
        if self.helper is None:
            return
        now = time.monotonic() if now is None else now
        replies = self.helper.replies()
        if replies is None:
            self._lose_helper()
            self._sync_when_due(now)
            return
        for generation, offset in replies:
            if generation != self.generation:
                continue
            self.in_flight = False
            if offset < 0:
                self._sync_failed(os.strerror(-offset))
            else:
                self._synced(offset)
        self._sync_when_due(now)

    def _needs_sync(self) -> bool:
        """An outcome written but not durable: ack lines alone wait for the next outcome's
        sync (an ack lost in a crash only replays what the scheduler has recorded), so a
        run costs one fdatasync at most, not two."""
        if not self.queue:  # then every waiting outcome is written (the usual case)
            return bool(self.waiting)
        return any(i is not None and i in self.waiting for i, _, _ in self.written)

    def _synced(self, offset: int) -> None:
        self.synced = max(self.synced, offset)
        durable = [x for x in self.written if x[2] <= offset]
        self.written = [x for x in self.written if x[2] > offset]
        self.waiting.difference_update(i for i, _, _ in durable if i is not None)
        self.error = ""

    def _sync_failed(self, reason: str) -> None:
        """What was written since the last good sync may be lost: write it again."""
        self.file.cut(self.synced)
        self.queue[:0] = [(i, line) for i, line, _ in self.written]
        self.written.clear()
        self.generation += 1
        self._failed(reason, time.monotonic())

    def _failed(self, reason: str, now: float) -> None:
        self.error = reason
        self.retry_at = now + JOURNAL_RETRY_S

    def _lose_helper(self) -> None:
        if self.helper is not None:
            self.helper.close()
            self.helper = None
            self.helper_lost = True
            self.in_flight = False

    def compact(self, pending: list[Outcome]) -> None:
        """Rewrite a big journal with only `pending` (between syncs; blocking, rare).  Ack
        lines not yet synced are moot then: the new file holds only what is pending."""
        busy = self.queue or self.in_flight or self._needs_sync()
        if self.file.size <= COMPACT_BYTES or busy:
            return
        with contextlib.suppress(OSError):
            self.file.rewrite(pending)
            self.synced = self.file.size
            self.written.clear()
            self.generation += 1

    def close(self, all_acked: bool) -> None:
        """At exit: an all-acknowledged file is emptied; the helper ends."""
        if all_acked:
            with contextlib.suppress(OSError):
                self.file.truncate()
        if self.helper is not None:
            self.helper.close()
        self.file.close()
