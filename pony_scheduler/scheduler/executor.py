"""The scheduler's side of the run keeper: hands runs to it, turns its events into the
run policy's records, and counts worker slots.

The keeper (pony_scheduler/keeper, docs/KEEPER.md) is the parent of every job process: a
run keeps running, and its outcome is kept, whatever happens to the scheduler.  This
module decides no state: it reports that a run started (Started) and how it ended
(runs.Outcome); the loop asks runs.settle what that makes of the run, records it, and
only then acknowledges the outcome, so a crash in between replays it (the store's epoch
guard makes a replay change nothing).  Everything runs on the loop's thread: the loop
sleeps on fileno() and calls poll().
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path

from pony_scheduler.keeper import protocol as kp
from pony_scheduler.keeper.client import KeeperClient, KeeperError, KeeperGone, OtherDatabase
from pony_scheduler.scheduler.runs import Ending, Outcome, Started
from pony_scheduler.store.common import utcnow
from pony_scheduler.waiting import pause

log = logging.getLogger("pony_scheduler.executor")
REFUSED_PAUSE_S = 1.0  # seconds without launches after the keeper refused one
# A launch the keeper has not answered this long (it answers within STARTED_DELAY_S with
# `started`, an outcome or a refusal): the keeper is frozen or hung, and no more runs are
# claimed until it answers, so that queued ones stay free for other hosts' schedulers
# rather than wait here for it and expire.
UNANSWERED_S = 5.0

Launch = kp.Launch  # what starting one run needs: the command resolved, its environment


class Executor:
    """Worker slots over the keeper: at most `workers` runs in flight; a run claimed ahead
    of a free slot waits in `pending` and goes to the keeper when one frees up (or back to
    the queue: take_back)."""

    def __init__(
        self,
        home: Path,
        workers: int,
        on_started: Callable[[Started], None],
        on_outcome: Callable[[Outcome], None],
        on_idle: Callable[[], None],
        skew: Callable[[], timedelta],
        containment: str | None = None,
        lease: kp.LeaseTerms | None = None,
    ) -> None:
        self.home = home
        self.workers = workers
        self.on_started = on_started
        self.on_outcome = on_outcome
        self.on_idle = on_idle
        self.skew = skew  # the database's clock minus ours: outcomes are stamped with it
        self.containment = containment
        # Given to the keeper, which renews the runs' leases while no scheduler is
        # connected (keeper/renewal.py).  A run claimed ahead that waited a third of the
        # lease for a slot (this process was frozen) is not launched: its lease may
        # have run out and another host may run it; it goes back (take_back).  (The
        # keeper refuses one that reaches it that late: Launch.start_by.)
        self.lease = lease
        self.stale_after = lease.lease_s / 3 if lease is not None else float("inf")
        self.client: KeeperClient | None = None
        self.keepers = 0  # connections made: the first tells the keeper it is our first
        self.in_flight: set[int] = set()
        self.unanswered: dict[int, float] = {}  # launched run -> when (monotonic)
        self.stalled = False  # the keeper has not answered a launch for UNANSWERED_S
        self.keeper_retiring = False  # asked to exit at connect (a drain it could not end)
        self.pending: collections.deque[tuple[kp.Launch, float]] = collections.deque()
        self.refused: list[int] = []  # refused by the keeper, to go back to the queue
        self.launch_after = 0.0  # monotonic: no launches before (after a refusal)
        self.last_finish = 0.0  # time.monotonic() of the latest finished run
        self.stopped = 0  # runs a drain stopped

    # -- the keeper ------------------------------------------------------------------------
    def connect(self, scheduler_id: str) -> kp.Welcome:
        """Connect to the home's keeper (starting it if none runs) as this scheduler;
        its welcome lists the runs it holds and the outcomes not recorded yet.  Raises
        KeeperError (ProtocolMismatch: another version's keeper holds runs; a refusal of
        a keeper holding another database's runs, saying which)."""
        try:
            self.client = KeeperClient.connect(
                self.home,
                scheduler_id,
                containment=self.containment,
                first_keeper=self.keepers == 0,
                lease=self.lease,
            )
        except OtherDatabase as exc:
            raise KeeperError(_other_database(exc, self.lease)) from None
        self.keepers += 1
        if self.lease is not None and not self.client.welcome.renews:
            log.warning(
                "The run keeper (pony-scheduler %s) does not renew leases while no "
                "scheduler runs: if this scheduler dies, other hosts rescue its "
                "runs after the lease; a newer keeper starts once this one exits",
                self.client.welcome.version,
            )
        self.in_flight = {held.run_id for held in self.client.welcome.runs}
        self.unanswered = {}
        self.stalled = False
        self.keeper_retiring = False
        self._retire_a_stuck_drain(self.client)
        return self.client.welcome

    def _retire_a_stuck_drain(self, client: KeeperClient) -> None:
        """A keeper left draining by a stop that could not record every outcome refuses
        every launch until a new scheduler's launch ends its drain; one from before that
        (an upgrade: no drain_ends in its status) never would, so it is asked to exit once
        its drained runs are gone, and the next keeper takes its journal (review finding:
        every launch was refused, for good)."""
        status = client.status()
        if status.draining and not status.drain_ends and not status.exiting:
            log.warning(
                "The run keeper (PID %d, pony-scheduler %s) was left draining by a stop "
                "and cannot take runs again: it is asked to exit once its %d run(s) have "
                "ended, and a new keeper is started then",
                status.pid,
                status.version,
                status.runs,
            )
            client.release_exit(0)
            self.keeper_retiring = True

    def fileno(self) -> int | None:
        """The keeper connection's descriptor for the loop's select(); None before connect."""
        return self.client.fileno() if self.client is not None else None

    def keeper(self) -> KeeperClient:
        """The connected client; KeeperError before connect() or after hand_over()."""
        if self.client is None:
            raise KeeperError("not connected to the run keeper")
        return self.client

    def poll(self) -> None:
        """Take the keeper's events: report starts and outcomes, fill freed slots."""
        try:
            events = self.keeper().read_events()
        except KeeperGone as exc:
            raise KeeperError(f"the run keeper went away: {exc}") from None
        finished = False
        for event in events:
            if not isinstance(event, kp.Superseded):
                self.unanswered.pop(event.run_id, None)
            if isinstance(event, kp.Started):
                self.on_started(
                    Started(event.run_id, event.pid, event.pid_start, event.output_path)
                )
            elif isinstance(event, kp.Outcome):
                self.in_flight.discard(event.run_id)
                self.stopped += event.ending == Ending.STOPPED
                self.on_outcome(self.outcome(event))
                finished = True
            elif isinstance(event, kp.Refused) and event.requeue:
                log.warning(
                    "Run %d: the keeper refused it (%s); it goes back to the queue",
                    event.run_id,
                    event.reason,
                )
                self.in_flight.discard(event.run_id)
                self.refused.append(event.run_id)
                # A draining keeper refuses every launch until it exits (then a new one
                # is started): no claim-refuse-requeue loop meanwhile.
                self.launch_after = time.monotonic() + REFUSED_PAUSE_S
                finished = True
            elif isinstance(event, kp.Refused):
                log.error("Run %d: the keeper refused it: %s", event.run_id, event.reason)
                self.in_flight.discard(event.run_id)
                self.on_outcome(
                    Outcome(
                        event.run_id,
                        Ending.NOT_STARTED,
                        self.stamp(None),
                        detail=f"the run keeper refused it: {event.reason}",
                        token=_epoch(event.token),
                    )
                )
                finished = True
            else:  # Superseded: another scheduler of this home took the keeper over
                raise KeeperError(f"the run keeper was taken over: {event.message}")
        if self.stalled and events and not self._stalled(time.monotonic()):
            log.warning("The run keeper answers again: runs are claimed again")
            finished = True  # free slots again: the loop claims
        if finished:
            self.last_finish = time.monotonic()
            self._fill()
            self.on_idle()

    def outcome(self, event: kp.Outcome) -> Outcome:
        """The run policy's Outcome of a keeper outcome, stamped with the database's clock."""
        ending = Ending(event.ending)
        detail = event.detail or None
        if ending is Ending.KILLED and not event.by:
            ending = Ending.EXITED  # a signal nobody here asked for: a crash, an OOM kill
        return Outcome(
            event.run_id,
            ending,
            self.stamp(event.finished_at),
            exit_code=event.exit_code,
            signal=event.signal,
            detail=detail,
            started_at=self.stamp(event.started_at) if event.started_at else None,
            pid=event.pid,
            pid_start=event.pid_start,
            output_path=event.output_path or None,
            output_bytes=event.output_bytes,
            output_note=event.output_note or None,
            tail=event.tail,
            leftovers=event.leftovers,
            leftovers_kept=event.leftovers_kept,
            peak_memory=event.peak_memory_bytes,
            cpu_s=event.cpu_seconds,
            containment=event.containment or None,
            token=_epoch(event.token),
            receipt=event.id,
            duration_s=event.duration_s,
        )

    def stamp(self, text: str | None) -> datetime:
        """A keeper time (this host's clock, ISO 8601 UTC; None: now) on the database's."""
        moment = datetime.fromisoformat(text) if text else utcnow()
        return moment + self.skew()

    def renewed(self) -> None:
        """Our leases were just renewed: the keeper need not renew them itself."""
        if self.client is not None:
            self.client.renewed()

    def ack(self, receipts: Iterable[str]) -> None:
        """The outcomes with these ids are recorded: the keeper may forget them."""
        ids = [receipt for receipt in receipts if receipt]
        if ids and self.client is not None:
            self.client.ack(ids)

    # -- slots -----------------------------------------------------------------------------
    def free_slots(self, ahead: int = 0) -> int:
        """How many more runs to hand over: one per free slot, plus `ahead` waiting;
        none for a moment after the keeper refused a launch (REFUSED_PAUSE_S)."""
        now = time.monotonic()
        if now < self.launch_after or self._stalled(now):
            return 0
        return max(0, self.workers + ahead - self.busy())

    def _stalled(self, now: float) -> bool:
        """Whether a launch has waited UNANSWERED_S for the keeper (logged once)."""
        late = bool(self.unanswered) and min(self.unanswered.values()) < now - UNANSWERED_S
        if late and not self.stalled:
            log.warning(
                "The run keeper has not answered a launch for %gs (frozen or hung?): no "
                "more runs are claimed until it does",
                UNANSWERED_S,
            )
        self.stalled = late
        return late

    def busy(self) -> int:
        """Runs in flight at the keeper plus those claimed ahead and waiting for a slot."""
        return len(self.in_flight) + len(self.pending)

    def pending_ids(self) -> list[int]:
        """Runs claimed ahead, not handed to the keeper yet."""
        return [launch.run_id for launch, _ in self.pending]

    def oldest_pending(self) -> float | None:
        """When the run waiting longest for a slot was handed over (monotonic)."""
        return self.pending[0][1] if self.pending else None

    def launch(self, launch: kp.Launch, claimed: float | None = None) -> None:
        """Hand a run over; `claimed` is when it was claimed (time.monotonic(); default
        now), which says when it is too late to launch it (stale_after)."""
        self.pending.append((launch, time.monotonic() if claimed is None else claimed))
        self._fill()

    def _fill(self) -> None:
        stale = time.monotonic() - self.stale_after
        while self.pending and len(self.in_flight) < self.workers:
            if self.pending[0][1] < stale:
                return  # release_waiting gives it back; never launched this late
            launch, _ = self.pending.popleft()
            self.in_flight.add(launch.run_id)
            self.unanswered[launch.run_id] = time.monotonic()
            self.keeper().launch(launch)

    def take_back(self, handed_before: float | None = None) -> list[int]:
        """Remove runs not handed to the keeper yet, handed over before `handed_before`
        (all of them when None); returns their ids, and those of runs the keeper refused
        with `requeue` (never started), for the caller to requeue."""
        back = [item for item in self.pending if handed_before is None or item[1] < handed_before]
        for item in back:
            self.pending.remove(item)
        refused, self.refused = self.refused, []
        return refused + [launch.run_id for launch, _ in back]

    def kill(self, run_id: int, why: str, signal: str = "KILL") -> None:
        """Stop run `run_id`'s whole process tree now; its outcome is `killed`, `why`."""
        if run_id in self.in_flight:
            self.keeper().kill(run_id, signal, by=why)

    # -- the end ---------------------------------------------------------------------------
    def drain(self, grace: float, stop_now: Callable[[], bool], keep_up: Callable[[], None]) -> int:
        """`pb scheduler stop`: runs get `grace` seconds, then the keeper stops their
        trees (outcome `stopped`: interrupted); returns how many were still running.
        Outcomes are recorded as they come (keep_up); release_keeper() lets the keeper
        exit once the last of them is recorded."""
        keeper = self.keeper()
        if self.in_flight:
            keeper.drain(grace, by="the scheduler's shutdown")
        hastened = False
        self.stopped = 0
        while self.in_flight:
            if stop_now() and not hastened:
                keeper.drain(0, by="the scheduler's shutdown (second signal)")
                hastened = True
            self.poll()
            keep_up()
            pause(0.05)
        keep_up()
        return self.stopped

    def release_keeper(self) -> None:
        """After a drain whose outcomes are all recorded: the keeper may exit.  Not
        called when some could not be (the database is unavailable): the keeper then
        keeps them, renews their runs' leases so that no other host declares those runs
        lost, and the next start records them (review finding: they were recorded lost,
        and not run again, when the keeper exited with them)."""
        self.keeper().release_exit()

    def hand_over(self) -> None:
        """Leave the runs to the keeper and whichever scheduler connects next."""
        if self.client is not None:
            self.client.close()
            self.client = None


def _other_database(exc: OtherDatabase, lease: kp.LeaseTerms | None) -> str:
    """The line a start on another database than the keeper's runs fails with."""
    from pony_scheduler.store.engine import safe_url

    ours = safe_url(lease.db) if lease is not None else "this scheduler's"
    return (
        f"the run keeper (PID {exc.pid}) holds {exc.runs} run(s) and {exc.outcomes} outcome(s) "
        f"not yet recorded of database {exc.db_shown}, not {ours}: they can be recorded "
        "only there, so start the scheduler on that database (--db, PONYBUNNY_DB or "
        "config.toml) and switch once 'pb runs' there shows none running"
    )


def _epoch(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None
