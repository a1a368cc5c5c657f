"""The one place a run's state is written.

Every move of a run (claim, release, skip, expire, settle, lose) is a typed record, and
`Transitions.write()` is the only function that applies one: it checks the move against
runstate.ALLOWED and guards the UPDATE with `WHERE state = <old>` (and, for a running
run, with the scheduler that claimed it).  A write that finds the run in another state is
refused: logged with what it would have written, returned False, never applied.  Inside a
batched transaction a refused write affects that run only; the caller goes on.

The statements are compiled once per engine and run on the driver's cursor (prepared.py):
every run goes through several of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Engine,
    Integer,
    Text,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)

from pony_scheduler.runstate import RunState, check_transition
from pony_scheduler.scheduler.runs import Outcome, Settlement
from pony_scheduler.store.prepared import Prepared
from pony_scheduler.store.tables import runs

log = logging.getLogger("pony_scheduler.store")

QUEUED, RUNNING = RunState.QUEUED.value, RunState.RUNNING.value


@dataclass(frozen=True, slots=True)
class Claimant:
    """Who claims: a scheduler process, the name it shows, the host it runs on."""

    scheduler: str  # schedulers.id
    hostname: str  # shown to users; never used to decide anything
    host: str  # machine id:boot id (scheduler/host.py)


@dataclass(frozen=True, slots=True)
class Claim:
    """queued -> running: `by` takes the run, with a lease until `lease_until`, under the
    next epoch (the fencing token every later write about it must carry)."""

    old: ClassVar[RunState] = RunState.QUEUED
    run_id: int
    epoch: int  # the run's epoch before the claim
    by: Claimant
    now: datetime
    lease_until: datetime

    @property
    def new(self) -> RunState:
        return RunState.RUNNING

    def params(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "b_epoch": self.epoch,
            "b_next": self.epoch + 1,
            "me": self.by.scheduler,
            "b_hostname": self.by.hostname,
            "b_host": self.by.host,
            "now": self.now,
            "until": self.lease_until,
        }


@dataclass(frozen=True, slots=True)
class Release:
    """running -> queued: a run claimed ahead of a free worker that never started."""

    old: ClassVar[RunState] = RunState.RUNNING
    run_id: int
    epoch: int

    @property
    def new(self) -> RunState:
        return RunState.QUEUED

    def params(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "b_epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class Drop:
    """queued -> skipped or expired, with the reason."""

    old: ClassVar[RunState] = RunState.QUEUED
    run_id: int
    new: RunState
    reason: str
    now: datetime

    def params(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "b_state": self.new.value,
            "b_reason": self.reason,
            "now": self.now,
        }


@dataclass(frozen=True, slots=True)
class Settle:
    """running -> its final state, from its outcome; the epoch it ran under guards it (a
    run another scheduler took over or declared lost meanwhile is not ours to settle)."""

    old: ClassVar[RunState] = RunState.RUNNING
    settlement: Settlement
    outcome: Outcome | None
    epoch: int

    @property
    def new(self) -> RunState:
        return self.settlement.state

    @property
    def run_id(self) -> int:
        return self.settlement.run_id

    def params(self) -> dict[str, Any]:
        s, o = self.settlement, self.outcome
        return {
            "run_id": s.run_id,
            "b_epoch": self.epoch,
            "b_state": s.state.value,
            "b_exit_code": s.exit_code,
            "b_signal": s.signal,
            "b_reason": s.reason,
            "b_started_at": s.started_at,
            "b_finished_at": s.finished_at,
            "b_tail": o.tail if o else None,
            "b_pid": o.pid if o else None,
            "b_pid_start": o.pid_start if o else None,
            "b_output_path": o.output_path if o else None,
            "b_leftovers": o.leftovers if o else None,
            "b_peak_memory": o.peak_memory if o else None,
            "b_cpu_s": o.cpu_s if o else None,
            "b_containment": o.containment if o else None,
        }


@dataclass(frozen=True, slots=True)
class Adopt:
    """running -> running under another scheduler: a hand-over (restart, upgrade) of a run
    the run keeper still holds.  The epoch stays: it names the execution, whose outcome
    the keeper will report under it."""

    old: ClassVar[RunState] = RunState.RUNNING
    run_id: int
    epoch: int
    by: Claimant
    lease_until: datetime

    @property
    def new(self) -> RunState:
        return RunState.RUNNING

    def params(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "b_epoch": self.epoch,
            "me": self.by.scheduler,
            "b_hostname": self.by.hostname,
            "b_host": self.by.host,
            "until": self.lease_until,
        }


@dataclass(frozen=True, slots=True)
class Lose:
    """running -> lost (runs.lose): its holder stopped renewing the lease, or is a
    scheduler of this host found dead.  Guarded by the epoch, by the holder, and - unless
    the holder was found dead - by the lease being still expired when this is written: a
    renewal that commits first (the holder's scheduler, or its run keeper's renewer while
    no scheduler runs there) keeps the run alive, and this write is refused."""

    old: ClassVar[RunState] = RunState.RUNNING
    settlement: Settlement
    epoch: int
    holder: str  # schedulers.id that held it when it was found abandoned
    now: datetime  # the database's time, as the rescuer knows it
    holder_dead: bool

    @property
    def new(self) -> RunState:
        return self.settlement.state

    @property
    def run_id(self) -> int:
        return self.settlement.run_id

    def params(self) -> dict[str, Any]:
        return {
            **Settle(self.settlement, None, self.epoch).params(),
            "b_holder": self.holder,
            "b_now": self.now,
            "b_dead": self.holder_dead,
        }


Move = Claim | Release | Drop | Settle | Adopt | Lose

CLAIM = (
    update(runs)
    .where(
        runs.c.id == bindparam("run_id"),
        runs.c.state == QUEUED,
        runs.c.epoch == bindparam("b_epoch"),
    )
    .values(
        state=RUNNING,
        epoch=bindparam("b_next"),
        claimed_by=bindparam("me"),
        hostname=bindparam("b_hostname"),
        host=bindparam("b_host"),
        started_at=bindparam("now"),
        lease_until=bindparam("until"),
    )
)
RELEASE = (
    update(runs)
    .where(
        runs.c.id == bindparam("run_id"),
        runs.c.state == RUNNING,
        runs.c.epoch == bindparam("b_epoch"),
        runs.c.pid.is_(None),
    )
    .values(
        state=QUEUED, claimed_by=None, hostname=None, host=None, started_at=None, lease_until=None
    )
)
DROP = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"), runs.c.state == QUEUED)
    .values(state=bindparam("b_state"), reason=bindparam("b_reason"), finished_at=bindparam("now"))
)
# pid, pid_start and output_path are kept when the outcome does not know them (a run
# declared lost, or one whose start was recorded earlier); so is started_at, the claim's
# time, which the process's own start replaces when there was one (runs.run_times): the
# duration `pb runs` shows, finished_at - started_at, is then the process's.
_FINISHED = bindparam("b_finished_at", type_=runs.c.finished_at.type)
SETTLE = (
    update(runs)
    .where(
        runs.c.id == bindparam("run_id"),
        runs.c.state == RUNNING,
        runs.c.epoch == bindparam("b_epoch"),
    )
    .values(
        state=bindparam("b_state"),
        exit_code=bindparam("b_exit_code"),
        signal=bindparam("b_signal"),
        reason=bindparam("b_reason"),
        output_tail=bindparam("b_tail"),
        started_at=func.coalesce(
            bindparam("b_started_at", type_=runs.c.started_at.type), runs.c.started_at
        ),
        # Never before its start: a run declared lost after the clock stepped back had a
        # negative duration (review finding; run_times keeps outcomes so already).
        finished_at=case((runs.c.started_at > _FINISHED, runs.c.started_at), else_=_FINISHED),
        lease_until=None,
        pid=func.coalesce(bindparam("b_pid", type_=Integer), runs.c.pid),
        pid_start=func.coalesce(bindparam("b_pid_start", type_=BigInteger), runs.c.pid_start),
        output_path=func.coalesce(bindparam("b_output_path", type_=Text), runs.c.output_path),
        leftovers=bindparam("b_leftovers"),
        peak_memory=bindparam("b_peak_memory"),
        cpu_s=bindparam("b_cpu_s"),
        containment=bindparam("b_containment"),
    )
)
LOSE = SETTLE.where(
    runs.c.claimed_by == bindparam("b_holder"),
    or_(runs.c.lease_until < bindparam("b_now"), bindparam("b_dead", type_=Boolean)),
)
ADOPT = (
    update(runs)
    .where(
        runs.c.id == bindparam("run_id"),
        runs.c.state == RUNNING,
        runs.c.epoch == bindparam("b_epoch"),
    )
    .values(
        claimed_by=bindparam("me"),
        hostname=bindparam("b_hostname"),
        host=bindparam("b_host"),
        lease_until=bindparam("until"),
    )
)
STATE_OF = select(runs.c.state, runs.c.claimed_by, runs.c.epoch).where(
    runs.c.id == bindparam("run_id")
)


class Transitions:
    """The guarded writes, prepared once per engine."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.statements: dict[type, Prepared] = {
            Claim: Prepared(CLAIM, dialect),
            Release: Prepared(RELEASE, dialect),
            Drop: Prepared(DROP, dialect),
            Settle: Prepared(SETTLE, dialect),
            Adopt: Prepared(ADOPT, dialect),
            Lose: Prepared(LOSE, dialect),
        }
        self.state_of = Prepared(STATE_OF, dialect)

    def write(self, connection: Any, move: Move) -> bool:
        """Apply `move` on a driver connection inside the caller's transaction.

        Returns True when applied; False, with an error logged, when the run was not in
        the state the move starts from (or not held by that scheduler).  Raises
        TransitionRefused for a move runstate.ALLOWED does not list (a bug), and the
        driver's errors as SQLAlchemy's DBAPIError.
        """
        check_transition(move.old, move.new)
        if self.statements[type(move)].rowcount(connection, move.params()) == 1:
            return True
        self._refused(connection, move)
        return False

    def _refused(self, connection: Any, move: Move) -> None:
        found = self.state_of.mappings(connection, {"run_id": move.run_id})
        if (
            isinstance(move, Lose)
            and found
            and found[0]["state"] == RUNNING
            and found[0]["epoch"] == move.epoch
        ):
            # Not an error: its host renewed the lease just before (the race is decided by
            # the row lock), or another scheduler adopted it.
            log.info("Run %d: not declared lost: its lease was renewed meanwhile", move.run_id)
            return
        if (
            isinstance(move, Settle)
            and found
            and found[0]["epoch"] == move.epoch
            and found[0]["state"] == move.new.value
        ):
            # The same outcome again (its acknowledgement was lost in a crash): done.
            log.debug("Run %d: outcome already recorded (%s)", move.run_id, found[0]["state"])
            return
        where = (
            f"found {found[0]['state']} at epoch {found[0]['epoch']}"
            + (
                # A finished run keeps the id of its last holder: "last held by" it.
                f" {'held' if found[0]['state'] == 'running' else 'last held'} by "
                f"{found[0]['claimed_by']}"
                if found[0]["claimed_by"]
                else ""
            )
            if found
            else "found no such run"
        )
        detail = ""
        if isinstance(move, Settle | Lose):
            detail = f"; its outcome was {move.new}" + (
                f" ({move.settlement.reason})" if move.settlement.reason else ""
            )
        mine = f" at epoch {move.epoch}" if hasattr(move, "epoch") else ""
        log.error(
            "Run %d: refused %s -> %s%s: %s%s", move.run_id, move.old, move.new, mine, where, detail
        )
