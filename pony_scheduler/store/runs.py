"""Queries about runs: queueing, claiming, leases, results, history.

Every change of a run's state goes through store/transitions.py; this module builds the
moves from the scheduler's decisions and the rows it reads.  Times are aware UTC
datetimes; durations are seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Engine, Integer, and_, bindparam, case, func, or_, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from pony_scheduler.runstate import RunState
from pony_scheduler.scheduler.runs import (
    Admission,
    Claimed,
    JobNow,
    Outcome,
    Run,
    Settlement,
    Started,
    Trigger,
    Verdict,
    policy_from,
)
from pony_scheduler.store.clock import ClockQueries
from pony_scheduler.store.common import insert_ignore, utcnow
from pony_scheduler.store.prepared import Prepared, transaction
from pony_scheduler.store.tables import jobs, runs
from pony_scheduler.store.transitions import (
    Claim,
    Claimant,
    Drop,
    Settle,
    Transitions,
)

log = logging.getLogger("pony_scheduler.store")


# What deciding on and starting a claimed run needs, read in the claiming query itself.
CLAIM_COLUMNS = (
    runs.c.id,
    runs.c.job_id,
    runs.c.occurrence,
    runs.c.attempt,
    runs.c.trigger,
    runs.c.due_at,
    runs.c.batch,
    runs.c.epoch,
    jobs.c.name,
    jobs.c.command,
    jobs.c.shell,
    jobs.c.timeout_s,
    jobs.c.retries,
    jobs.c.retry_delay_s,
    jobs.c.overlap,
    jobs.c.catch_up,
    jobs.c.start_deadline_s,
    jobs.c.max_queued,
    jobs.c.cwd,
    jobs.c.env,
    jobs.c.umask,
    jobs.c.env_file,
    jobs.c.secret_env,
    jobs.c.last_finished_at,
    jobs.c.leftovers,
    jobs.c.memory_max,
    jobs.c.cpu_max,
    jobs.c.tasks_max,
)

QUEUED = RunState.QUEUED.value
RUNNING = RunState.RUNNING.value
BUSY = select(runs.c.job_id, runs.c.batch).where(runs.c.state == RUNNING)
# A paused job's runs wait (manual ones excepted: someone asked for them); a job being
# removed starts nothing.
DUE_RUNS = (
    select(*CLAIM_COLUMNS)
    .join(jobs, jobs.c.id == runs.c.job_id)
    .where(
        runs.c.state == QUEUED,
        runs.c.due_at <= bindparam("now"),
        jobs.c.removed_at.is_(None),
        jobs.c.enabled.is_(True) | (runs.c.trigger == Trigger.MANUAL.value),
    )
    .order_by(runs.c.due_at, runs.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True, of=runs)
)
STARTED = (
    update(runs)
    .where(runs.c.id == bindparam("run_id"), runs.c.state == RUNNING)
    .values(
        pid=bindparam("b_pid"),
        pid_start=bindparam("b_pid_start"),
        output_path=bindparam("b_output_path"),
    )
)
# The job's last result, written with its run's final state (`pb job list` reads it):
# one UPDATE per job and transaction.  The newest run wins - by id, the order runs are
# made in, which no clock step reorders - so a result written late (an outcome collected
# after a hand-over, a run found lost when its lease ran out) does not hide a newer
# run's (review finding).  A retry (or a resume) is made when the attempt before fails,
# so runs queued during its delay have higher ids, yet it starts after them: it wins
# when it started after the recorded run (review finding: a failed retry hid behind a
# newer success) - by their start stamps, the one clock comparison here, made only for
# these runs (a retry collected late must not hide a run that started after it, review
# finding).  The last success is written whatever its run's age.  Every SET reads the
# row as it was, so one guard serves all four.
_LAST_START = select(runs.c.started_at).where(runs.c.id == jobs.c.last_run_id).scalar_subquery()
_NEWER = or_(
    func.coalesce(jobs.c.last_run_id, 0) < bindparam("b_run_id", type_=Integer),
    and_(
        bindparam("b_again", type_=Boolean),
        or_(
            _LAST_START.is_(None),
            bindparam("b_started", type_=runs.c.started_at.type) > _LAST_START,
        ),
    ),
)


def _if_newer(column: Any, name: str) -> Any:
    return case((_NEWER, bindparam(name, type_=column.type)), else_=column)


LAST_RESULT = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"))
    .values(
        last_run_id=_if_newer(jobs.c.last_run_id, "b_run_id"),
        last_state=_if_newer(jobs.c.last_state, "b_state"),
        last_finished_at=_if_newer(jobs.c.last_finished_at, "b_finished_at"),
        last_duration_s=_if_newer(jobs.c.last_duration_s, "b_duration"),
        last_success_at=func.coalesce(
            bindparam("b_success_at", type_=jobs.c.last_success_at.type), jobs.c.last_success_at
        ),
    )
)
SET_ASIDE = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.error.is_(None))
    .values(error=bindparam("b_error"), next_due_at=None)
)
NEXT_QUEUED = select(func.min(runs.c.due_at)).where(runs.c.state == QUEUED)
NEXT_QUEUED_AFTER = NEXT_QUEUED.where(runs.c.due_at > bindparam("after"))
EXPIRY_WINDOW = 16  # due runs looked at per claim at least, for expiry
# A value one run cannot be written with must not stop the others (no poison pill).
POISON = (DataError, IntegrityError, ValueError, TypeError, OverflowError)


@dataclass(frozen=True, slots=True)
class Finished:
    """A run's settlement, with the outcome that led to it (None for a lost run)."""

    run: Run
    epoch: int  # the fencing token it ran under
    settlement: Settlement
    outcome: Outcome | None
    started_at: datetime | None = None  # when it was claimed (the settlement may know better)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Claim up to `limit` due runs at `now` with a lease of `lease_s` seconds; `admit`
    is runs.admit() with this scheduler's capacity bound in.  `scan`: judge every due run
    of the window (expire, skip) even once `limit` are claimed; without it the claim stops
    there, and the loop asks for a scan at least once per EXPIRY_SCAN_S."""

    now: datetime
    limit: int
    lease_s: float
    admit: Callable[[Run, JobNow], Admission]
    scan: bool = True


class _Judged:
    """What one claim has found so far, across its reads of the due runs."""

    __slots__ = ("busy", "busy_read", "claimed", "me", "request", "seen", "waiting")

    def __init__(self, request: ClaimRequest, me: Claimant) -> None:
        self.request = request
        self.me = me
        self.claimed: list[Claimed] = []
        self.waiting = False  # due runs were left: for a worker, their job or a scan
        self.busy: dict[int, set[int | None]] = {}  # job id: batches of its running runs
        self.busy_read = False
        self.seen: set[int] = set()  # ids judged (or set aside) already


def run_from(row: dict[str, Any]) -> Run:
    """The Run record of a claim row; ValueError/TypeError when a value cannot be read."""
    policy = policy_from(
        row["retries"],
        row["retry_delay_s"],
        row["overlap"],
        row["catch_up"],
        row["start_deadline_s"],
        row["max_queued"],
    )
    return Run(
        row["id"],
        row["job_id"],
        row["name"],
        row["occurrence"],
        row["attempt"],
        Trigger(row["trigger"]),
        row["due_at"],
        policy,
        row["batch"],
    )


def claimed_from(run: Run, row: dict[str, Any], epoch: int) -> Claimed:
    """What starting a claimed run needs, from its claim row; ValueError when the stored
    command or environment is damaged."""
    command, env = json.loads(row["command"]), json.loads(row["env"] or "{}")
    secret = json.loads(row["secret_env"] or "[]")
    if not (isinstance(command, list) and command and isinstance(env, dict)):
        raise ValueError("the stored command or environment is damaged")
    return Claimed(
        run,
        epoch,
        tuple(str(part) for part in command),
        bool(row["shell"]),
        row["cwd"],
        {str(k): str(v) for k, v in env.items()},
        int(row["umask"]),
        row["timeout_s"],
        row["env_file"],
        frozenset(secret),
        row["leftovers"],
        row["memory_max"],
        row["cpu_max"],
        row["tasks_max"],
    )


class HotStatements:
    """What every run goes through, prepared once per engine (see prepared.py)."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.transitions = Transitions(engine)
        self.busy = Prepared(BUSY, dialect)
        self.due_runs = Prepared(DUE_RUNS, dialect)
        self.started = Prepared(STARTED, dialect)
        self.last_result = Prepared(LAST_RESULT, dialect)
        self.set_aside = Prepared(SET_ASIDE, dialect)
        self.attempt = Prepared(
            insert_ignore(engine, runs).values(
                job_id=bindparam("job_id"),
                occurrence=bindparam("occurrence"),
                attempt=bindparam("attempt"),
                trigger=bindparam("trigger"),
                state=QUEUED,
                due_at=bindparam("due_at"),
                created_at=bindparam("created_at"),
                batch=bindparam("batch"),
                epoch=0,
            ),
            dialect,
        )  # prepared: no Core defaults


class RunQueries(ClockQueries):
    engine: Engine
    _hot: HotStatements | None = None

    @property
    def hot(self) -> HotStatements:
        if self._hot is None:
            self._hot = HotStatements(self.engine)
        return self._hot

    # -- what users do ----------------------------------------------------------------------

    # -- what the work loop does ------------------------------------------------------------
    def next_run_due(self, after: datetime | None = None) -> datetime | None:
        """The earliest due time of a queued run (after `after`, if given), or None."""
        with self.engine.connect() as connection:
            if after is None:
                return connection.execute(NEXT_QUEUED).scalar()
            return connection.execute(NEXT_QUEUED_AFTER, {"after": after}).scalar()

    def record_and_claim(
        self,
        me: Claimant,
        started: list[Started],
        finished: list[Finished],
        claim: ClaimRequest | None,
    ) -> tuple[list[Finished], list[Claimed], bool]:
        """Write what the executor reported, then claim due runs: one transaction.

        Returns the finished runs whose settlement was written (their next attempts are
        queued here too; the others were refused and logged), the runs claimed, and
        whether due runs were left waiting (for a worker, their job's previous run or
        another scheduler).  A value one run cannot be written with is retried for that
        run alone, without its output tail, noted in its reason (runs never block each
        other).  Raises DBAPIError when the database is unavailable: nothing is written.
        """
        try:
            with transaction(self.engine) as connection:
                return self._record_then_claim(
                    connection, me, started, finished, claim, isolated=False
                )
        except POISON as exc:
            if isinstance(exc, DBAPIError) and not isinstance(exc, DataError | IntegrityError):
                raise
            log.warning("A run's result could not be written (%s); writing each apart", exc)
        with transaction(self.engine) as connection:
            return self._record_then_claim(connection, me, started, finished, claim, isolated=True)

    def claim(self, me: Claimant, request: ClaimRequest) -> tuple[list[Claimed], bool]:
        """Claim due runs with nothing to record; see record_and_claim."""
        _, claimed, waiting = self.record_and_claim(me, [], [], request)
        return claimed, waiting

    def _record_then_claim(
        self,
        connection: Any,
        me: Claimant,
        started: list[Started],
        finished: list[Finished],
        claim: ClaimRequest | None,
        isolated: bool,
    ) -> tuple[list[Finished], list[Claimed], bool]:
        ours = self._record(connection, started, finished, isolated)
        if claim is None:
            return ours, [], False
        claimed, waiting = self._claim(connection, me, claim)
        return ours, claimed, waiting

    def _record(
        self, connection: Any, started: list[Started], finished: list[Finished], isolated: bool
    ) -> list[Finished]:
        hot = self.hot
        pids = {item.run_id: item for item in started}
        ours = []
        for item in finished:
            pids.pop(item.run.id, None)  # the outcome carries the pid too
            write = self._write_isolated if isolated else self._settle
            if write(connection, item):
                ours.append(item)
        if pids:  # still running: what a restart needs to find them
            hot.started.execute_many(
                connection,
                [
                    {
                        "run_id": s.run_id,
                        "b_pid": s.pid,
                        "b_pid_start": s.pid_start,
                        "b_output_path": s.output_path,
                    }
                    for s in pids.values()
                ],
            )
        self._last_results(connection, ours)
        return ours

    def _settle(self, connection: Any, item: Finished) -> bool:
        if not self.hot.transitions.write(
            connection, Settle(item.settlement, item.outcome, item.epoch)
        ):
            return False
        if item.settlement.next_attempt is not None:
            self._insert_attempt(
                connection,
                item.run,
                item.settlement.next_attempt.due_at,
                item.settlement.next_attempt.trigger,
            )
        return True

    def _write_isolated(self, connection: Any, item: Finished) -> bool:
        """One run's settlement on a savepoint; again without its tail if a value of it
        cannot be written, with a note saying so."""
        for attempt in (item, _without_tail(item)):
            try:
                with savepoint(connection):
                    return self._settle(connection, attempt)
            except POISON as exc:
                if isinstance(exc, DBAPIError) and not isinstance(exc, DataError | IntegrityError):
                    raise
                log.error("Run %d: its result could not be written as is: %s", item.run.id, exc)
        return False

    def _last_results(self, connection: Any, finished: list[Finished]) -> None:
        """Each job's last result and last success from the runs just settled: one
        UPDATE per job, however many of its runs ended."""
        latest: dict[int, Finished] = {}
        success: dict[int, datetime] = {}
        for item in finished:
            job_id = item.run.job_id
            if job_id not in latest or _newer(item, latest[job_id]):
                latest[job_id] = item
            if item.settlement.state is RunState.SUCCEEDED:
                success[job_id] = item.settlement.finished_at  # the last one written wins
        for job_id, item in latest.items():
            s = item.settlement
            duration = s.duration_s(item.started_at)  # as `pb runs` shows it
            self.hot.last_result.rowcount(
                connection,
                {
                    "job_id": job_id,
                    "b_run_id": s.run_id,
                    "b_again": item.run.trigger in _AGAIN,
                    "b_started": _started(item),
                    "b_state": s.state.value,
                    "b_finished_at": s.finished_at,
                    "b_duration": duration,
                    "b_success_at": success.get(job_id),
                },
            )

    def _claim(
        self, connection: Any, me: Claimant, request: ClaimRequest
    ) -> tuple[list[Claimed], bool]:
        # Due runs are looked at even with no worker free: those past their start
        # deadline expire now, with the reason, rather than when a worker frees up.
        if request.limit == 0 and not request.scan:
            return [], True  # no worker free: due runs (if any) wait for one
        window = max(request.limit * 4, EXPIRY_WINDOW)
        # Between scans a claim stops at its limit, which the first due runs nearly
        # always reach: it reads twice the limit, and the rest of the window only when
        # those were not enough (runs held back by their job's previous run).  Reading
        # the whole window every time was a tenth of the store's CPU per run with one
        # worker.
        first = window if request.scan else min(window, 2 * request.limit)
        judged = _Judged(request, me)
        rows = self._due_rows(connection, request.now, first)
        self._judge(connection, judged, rows)
        if len(rows) == first < window:
            if len(judged.claimed) < request.limit:
                seen, key = judged.seen, self.hot.due_runs.keys.index("id")
                rest = self._due_rows(connection, request.now, window)
                self._judge(connection, judged, [row for row in rest if row[key] not in seen])
            else:
                judged.waiting = True  # the rest are judged by the next claim or scan
        return judged.claimed, judged.waiting

    def _due_rows(self, connection: Any, now: datetime, limit: int) -> list[Any]:
        """Up to `limit` due runs, in claim order, as the driver's raw tuples: each is
        converted only when it is looked at."""
        return self.hot.due_runs.tuples(connection, {"now": now, "limit": limit})

    def _judge(self, connection: Any, judged: _Judged, rows: list[Any]) -> None:
        """Admit the due runs of `rows` in order: claim, leave waiting, skip or expire
        each, until the claim's limit (without a scan)."""
        hot, due, request = self.hot, self.hot.due_runs, judged.request
        overlap = due.keys.index("overlap")
        if not judged.busy_read and any(row[overlap] != "allow" for row in rows):
            judged.busy_read = True
            for row in hot.busy.mappings(connection, raw=True):
                judged.busy.setdefault(row["job_id"], set()).add(row["batch"])
        until = request.now + timedelta(seconds=request.lease_s)
        for raw in rows:
            if len(judged.claimed) >= request.limit and not request.scan:
                judged.waiting = True  # the rest are judged by the next claim or scan
                return
            try:
                row = due.convert(raw)
                judged.seen.add(row["id"])
                run = run_from(row)
            except (ValueError, TypeError, LookupError) as exc:
                self._set_aside(connection, dict(zip(due.keys, raw, strict=True)), exc, request.now)
                continue
            job = JobNow(frozenset(judged.busy.get(run.job_id, ())), row["last_finished_at"])
            decision = request.admit(run, job)
            if decision.verdict is Verdict.START and len(judged.claimed) >= request.limit:
                judged.waiting = True
            elif decision.verdict is Verdict.START:
                try:
                    start = claimed_from(run, row, row["epoch"] + 1)
                except (ValueError, TypeError, LookupError) as exc:
                    self._set_aside(connection, row, exc, request.now)
                    continue
                if hot.transitions.write(
                    connection, Claim(run.id, row["epoch"], judged.me, request.now, until)
                ):
                    judged.busy.setdefault(run.job_id, set()).add(run.batch)
                    judged.claimed.append(start)
                else:
                    judged.waiting = True
            elif decision.verdict is Verdict.WAIT:
                judged.waiting = True
            else:
                new = RunState.SKIPPED if decision.verdict is Verdict.SKIP else RunState.EXPIRED
                self._drop(connection, run.id, new, decision.reason or str(new), request.now)

    def _set_aside(
        self, connection: Any, row: dict[str, Any], exc: Exception, now: datetime
    ) -> None:
        """A due run whose job definition cannot be read: skipped, and its job set aside,
        as the planner does with a schedule it cannot evaluate (shown by pb job list and
        show, not scheduled until 'pb job edit' repairs it).  `row`: its claim row, raw or
        converted (only its plain id, job_id and name are read)."""
        reason = f"job definition cannot be read: {exc}"
        self._drop(connection, row["id"], RunState.SKIPPED, reason, now)
        self.hot.set_aside.rowcount(connection, {"job_id": row["job_id"], "b_error": reason})
        log.error("Job %s set aside: %s", row["name"], reason)

    def _drop(
        self, connection: Any, run_id: int, new: RunState, reason: str, now: datetime
    ) -> None:
        if self.hot.transitions.write(connection, Drop(run_id, new, reason, now)):
            log.info("Run %d %s: %s", run_id, new, reason)

    def _insert_attempt(
        self, connection: Any, run: Run, due_at: datetime, trigger: Trigger
    ) -> None:
        self.hot.attempt.rowcount(
            connection,
            {
                "job_id": run.job_id,
                "occurrence": run.occurrence,
                "attempt": run.attempt + 1,
                "trigger": trigger.value,
                "due_at": due_at,
                "created_at": utcnow(),
                "batch": run.batch,
            },
        )


def _without_tail(item: Finished) -> Finished:
    from dataclasses import replace

    settlement = item.settlement
    note = "output tail not recorded: it could not be stored"
    reason = f"{settlement.reason}; {note}" if settlement.reason else note
    outcome = replace(item.outcome, tail=b"") if item.outcome is not None else None
    return replace(item, settlement=replace(settlement, reason=reason), outcome=outcome)


@contextlib.contextmanager
def savepoint(connection: Any) -> Iterator[None]:
    """A SAVEPOINT on a driver connection: released, or rolled back to on any error."""
    cursor = connection.cursor()
    try:
        cursor.execute("SAVEPOINT run_write")
        try:
            yield
        except BaseException:
            cursor.execute("ROLLBACK TO SAVEPOINT run_write")
            raise
        cursor.execute("RELEASE SAVEPOINT run_write")
    finally:
        cursor.close()


# Runs made before they can start, to repeat an attempt: a retry (made when the attempt
# failed, due after its delay) and a resume (made at a stop, due at the next start).
_AGAIN = frozenset({Trigger.RETRY, Trigger.RESUME})


def _started(item: Finished) -> datetime | None:
    """When a settled run started: its process, else its claim."""
    return item.settlement.started_at or item.started_at


def _newer(item: Finished, than: Finished) -> bool:
    """LAST_RESULT's guard within one batch: a newer run, or a retry or resume that
    started after `than`."""
    if item.run.id > than.run.id:
        return True
    mine, theirs = _started(item), _started(than)
    return item.run.trigger in _AGAIN and (theirs is None or (mine is not None and theirs < mine))
