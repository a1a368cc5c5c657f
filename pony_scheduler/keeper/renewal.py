"""Keeping the runs' leases alive while no scheduler renews them.

A run's lease tells other hosts that it is alive (README, "Never lost, never doubled").
Its scheduler renews it at each heartbeat; when that scheduler dies, hangs up or is being
replaced, the runs go on here, and without renewals another host would declare them lost
after the lease and run them again beside their live selves.  So while no scheduler is
connected and the keeper holds runs (or outcomes whose runs the database still has
running: the host's next scheduler records them), it renews their leases: every lease/3
(the first lease/12 after the scheduler left, when its own last renewal may be that old)
it starts one short-lived renewer process (pony_scheduler.scheduler.renew; the keeper
stays free of database code and threads) that renews them all in one transaction by
(run id, epoch) on the database's clock, answers on a pipe, and exits.

The same holds while a scheduler is connected but silent: it says "renewed" after each
renewal of its leases (every lease/12), and a keeper that has not heard that for lease/3
(the scheduler was stopped with SIGSTOP, or hangs) renews the leases of the runs it
holds until it hears it again.  Otherwise a scheduler stopped while its keeper runs on
would have those runs rescued by another host and run twice.  A scheduler that never
says it (none yet connected, or one from before this) is not stood in for.

What the scheduler gave in its hello (LeaseTerms: the database URL, which may hold a
password, and the lease) stays in memory; the URL reaches the renewer in its environment
(PONYBUNNY_RENEW_DB), never on a command line or in keeper.log.

The answer is authoritative: a run the database no longer has running under its epoch
was taken over by another host (its lease ran out while this host was frozen, or could
not reach the database); its copy here is stopped at once (SIGKILL to its whole tree),
and its outcome, refused by the epoch guard, records nothing over the rescuer.  A
renewal that fails (database unreachable, renewer hung: killed after lease/3) is logged
and tried again after lease/6; once renewals have failed for longer than the lease, the
log says the runs may have been taken over.  They are not stopped for that alone: a
database outage would otherwise kill every run; the first renewal that reaches the
database decides, run by run, and a rescuer can never win against a renewal that
committed first (store/transitions.py, Lose).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pony_scheduler.keeper.protocol import LeaseTerms

if TYPE_CHECKING:
    from pony_scheduler.keeper.server import Keeper

DB_VAR = "PONYBUNNY_RENEW_DB"  # as pony_scheduler.scheduler.renew reads it
RENEWER = ("-m", "pony_scheduler.scheduler.renew")
LEASE_LOST_BY = "the run keeper: its lease was taken over by another host"
MAX_ANSWER = 4 * 1024 * 1024  # bytes: run ids and a few words for each gone run


@dataclass
class Renewer:
    """One renewer process in flight."""

    pid: int
    out: int  # read end of its stdout
    asked: list[tuple[int, int]]
    kill_at: float  # monotonic: a renewer still running then is hung
    answer: bytearray
    exited: bool = False


class Renewals:
    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self.terms: LeaseTerms | None = None
        self.due: float | None = None  # monotonic: when to start the next renewer
        self.child: Renewer | None = None
        self.gone: set[int] = set()  # runs of unacknowledged outcomes no longer running
        self.renewed_at: float | None = None  # monotonic: the last successful renewal
        self.failures = 0
        self.overdue_logged = False
        self.last_error = ""  # the last renewal failure's reason, logged once
        # monotonic: when the connected scheduler last said it renewed; None: not yet
        self.heard: float | None = None
        self.standing_in = False  # renewing for a connected scheduler that is silent

    # ---------------------------------------------------------------- the scheduler
    def scheduler_came(self, terms: LeaseTerms | None) -> None:
        """A scheduler said hello: it renews now (with these terms for when it leaves;
        None from a scheduler too old to give any: nothing is renewed then)."""
        self.terms = terms
        self.due, self.heard, self.standing_in = None, None, False
        self.gone &= {outcome.run_id for outcome in self.keeper.unacked.values()}

    def scheduler_renewed(self, now: float) -> None:
        """The connected scheduler renewed its leases: it stays in charge of them; if it
        falls silent for a third of the lease, this keeper steps in."""
        if self.terms is None:
            return
        if self.standing_in:
            self.keeper.log.info("The scheduler renews its leases again")
        self.heard, self.standing_in, self.renewed_at = now, False, now
        if self.child is None:
            self.due = now + self.terms.lease_s / 3

    def scheduler_left(self, now: float) -> None:
        self.heard, self.standing_in = None, False
        if self.terms is None:
            return
        self.renewed_at = now - self.terms.lease_s / 12  # the scheduler's, at the latest
        self.due = now + self.terms.lease_s / 12
        self.overdue_logged = False
        if self.wanted():
            self.keeper.log.info(
                "No scheduler connected: renewing the leases of %d run(s) every %gs until one is",
                len(self.wanted()),
                round(self.terms.lease_s / 3, 1),
            )

    # ---------------------------------------------------------------- the loop
    def wanted(self) -> list[tuple[int, int]]:
        """(run id, epoch) of the runs whose leases this keeper must renew now: with no
        scheduler connected, or with one silent for lease/3."""
        if self.keeper.scheduler is not None and not self._silent(time.monotonic()):
            return []
        return self.held()

    def _silent(self, now: float) -> bool:
        """Whether the connected scheduler has not said "renewed" for lease/3."""
        silent_at = self._recheck_at()
        return silent_at is not None and now >= silent_at

    def held(self) -> list[tuple[int, int]]:
        """(run id, epoch) of the runs held here and of those whose outcome waits."""
        keeper = self.keeper
        if self.terms is None or keeper.exit_requested:
            return []
        pairs = {run.run_id: run.launch.token for run in keeper.runs.values()}
        for outcome in keeper.unacked.values():
            if outcome.run_id not in self.gone:
                pairs.setdefault(outcome.run_id, outcome.token)
        return sorted((run_id, int(token)) for run_id, token in pairs.items() if token.isdigit())

    def busy(self) -> bool:
        """Whether the keeper must stay for this: a renewer runs, or leases need it."""
        return self.child is not None or bool(self.wanted())

    def next_wake(self) -> float | None:
        if self.child is not None:
            return self.child.kill_at
        return self.due if self.due is not None and self.held() else None

    def tick(self, now: float) -> None:
        child = self.child
        if child is not None and not child.exited and now >= child.kill_at:
            self.keeper.log.warning("The lease renewer (PID %d) hung; killed", child.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)  # our unreaped child: the pid is its own
            child.kill_at = now + 3600  # its pipe's end finishes it
        if self.child is None and self.due is not None and now >= self.due:
            pairs = self.wanted()
            if pairs and self.terms is not None:
                self._stand_in(now, len(pairs))
                self._start(self.terms, pairs, now)
            else:
                self.due = self._recheck_at()

    def _recheck_at(self) -> float | None:
        """When a connected scheduler that has said it renews would be silent too long."""
        if self.keeper.scheduler is not None and self.heard is not None and self.terms:
            return self.heard + self.terms.lease_s / 3
        return None

    def _stand_in(self, now: float, count: int) -> None:
        scheduler = self.keeper.scheduler
        if scheduler is None or self.standing_in or self.heard is None:
            return
        self.standing_in = True
        self.keeper.log.warning(
            "The scheduler (PID %d) has not renewed its leases for %ds (stopped, hung, "
            "or cut off from the database?): renewing the leases of %d run(s) until it "
            "does",
            scheduler.peer_pid,
            int(now - self.heard),
            count,
        )

    def _start(self, terms: LeaseTerms, pairs: list[tuple[int, int]], now: float) -> None:
        request = json.dumps({"lease_s": terms.lease_s, "runs": pairs}).encode()
        # The request is a file, not a pipe: the keeper never blocks on a slow reader.
        memfd = os.memfd_create("renew-request", os.MFD_CLOEXEC)
        read_end = write_end = -1
        try:
            os.write(memfd, request)
            os.lseek(memfd, 0, os.SEEK_SET)
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(read_end, False)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PONYBUNNY_")}
            env[DB_VAR] = terms.db
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, *RENEWER],
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, memfd, 0), (os.POSIX_SPAWN_DUP2, write_end, 1)],
                setsigdef=(signal.SIGPIPE,),
                setsigmask=(),
            )
        except OSError as exc:
            self.keeper.log.error("Cannot start the lease renewer: %s", exc.strerror)
            if read_end >= 0:
                os.close(read_end)
            self._failed(now)
            return
        finally:
            os.close(memfd)
            if write_end >= 0:
                os.close(write_end)
        self.child = Renewer(pid, read_end, pairs, now + terms.lease_s / 3, bytearray())
        self.keeper.tracker.exclude.add(pid)  # not a run's leftover
        self.keeper.epoll.register(read_end, select.EPOLLIN)
        self.keeper.handlers[read_end] = ("renewer", self)

    def readable(self) -> None:
        """The renewer's stdout: collect its answer; at its end, act on it."""
        child = self.child
        assert child is not None
        try:
            data = os.read(child.out, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and len(child.answer) < MAX_ANSWER:
            child.answer += data
            return
        self.keeper.forget_fd(child.out)
        os.close(child.out)
        self.child = None
        self._answered(child, time.monotonic())

    def reaped(self, pid: int) -> None:
        """A child that is not a run's main process was reaped (wait4 in the loop)."""
        if self.child is not None and pid == self.child.pid:
            self.child.exited = True
        self.keeper.tracker.exclude.discard(pid)

    # ---------------------------------------------------------------- answers
    def _answered(self, child: Renewer, now: float) -> None:
        try:
            answer = json.loads(bytes(child.answer))
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError:
            answer = {"error": "the renewer exited without an answer (see above)"}
        if "error" in answer:
            reason = str(answer["error"])[:500]
            # One line per fault, not one per retry (a new reason is a new fault).
            level = logging.DEBUG if reason == self.last_error else logging.WARNING
            self.keeper.log.log(
                level,
                "Cannot renew the leases of %d run(s): %s; retrying every %gs",
                len(child.asked),
                reason,
                round(self.terms.lease_s / 6, 1) if self.terms else 0,
            )
            self.last_error = reason
            self._failed(now)
            return
        renewed = answer.get("renewed") or []
        gone = answer.get("gone") or {}
        if self.failures or self.overdue_logged:
            self.keeper.log.info(
                "The database is reachable again: leases renewed (%d run(s))", len(renewed)
            )
        else:
            self.keeper.log.debug(
                "Leases of %d run(s) renewed until %s", len(renewed), answer.get("until")
            )
        self.failures, self.overdue_logged, self.last_error = 0, False, ""
        self.renewed_at = now
        self.due = now + self.terms.lease_s / 3 if self.terms is not None else None
        for key, found in gone.items():
            self._gone(int(key), str(found))

    def _gone(self, run_id: int, found: str) -> None:
        """The database no longer has this run running under our epoch."""
        run = self.keeper.runs.get(run_id)
        if run is not None and not run.done:
            self.keeper.log.error(
                "Run %d is no longer this host's (the database has it %s): another host "
                "took it over while its lease was not renewed; stopping it",
                run_id,
                found,
            )
            run.stop("killed", f"killed by {LEASE_LOST_BY}", signal.SIGKILL, LEASE_LOST_BY)
        elif run_id not in self.gone:
            # With a scheduler connected this is routine (it recorded the run and its
            # acknowledgement is on the way); alone, it is worth a line.
            level = logging.DEBUG if self.keeper.scheduler is not None else logging.INFO
            self.keeper.log.log(
                level,
                "Run %d: its outcome waits for the next scheduler, but the "
                "database has it %s; no more renewals for it",
                run_id,
                found,
            )
        self.gone.add(run_id)

    def _failed(self, now: float) -> None:
        if self.terms is None:
            self.due = None
            return
        self.failures += 1
        self.due = now + self.terms.lease_s / 6
        since = self.renewed_at if self.renewed_at is not None else now
        if now - since > self.terms.lease_s and not self.overdue_logged:
            self.overdue_logged = True
            self.keeper.log.error(
                "The leases of %d run(s) have not been renewed for %ds, longer than the "
                "lease (%gs): another host may have taken them over; the first renewal that "
                "reaches the database stops those it did",
                len(self.wanted()),
                int(now - since),
                self.terms.lease_s,
            )
