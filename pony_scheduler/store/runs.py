"""Queries about runs: queueing, claiming, leases, results, history."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, update

from pony_scheduler.runstate import RunState, check_transition
from pony_scheduler.store.common import bump_changes, insert_ignore, iso, row_dict, utcnow
from pony_scheduler.store.jobs import UnknownJob
from pony_scheduler.store.prepared import Prepared, transaction
from pony_scheduler.store.tables import jobs, runs, schedulers

RUN_VIEW = (runs.c.id, jobs.c.name.label("job"), runs.c.occurrence, runs.c.attempt,
            runs.c.state, runs.c.trigger, runs.c.due_at, runs.c.started_at,
            runs.c.finished_at, runs.c.exit_code, runs.c.reason, runs.c.pid,
            runs.c.hostname, runs.c.claimed_by)


# What starting a claimed run needs, read in the claiming query itself.
CLAIM_COLUMNS = (runs.c.id, runs.c.job_id, runs.c.occurrence, runs.c.attempt, runs.c.trigger,
                 jobs.c.overlap, jobs.c.name, jobs.c.command, jobs.c.shell, jobs.c.timeout_s,
                 jobs.c.retries, jobs.c.retry_delay_s, jobs.c.cwd, jobs.c.env)

# The statements every run goes through, built once with bound parameters: building a
# statement and its cache key costs more than running it on SQLite.
QUEUED = RunState.QUEUED.value
RUNNING = RunState.RUNNING.value
BUSY_JOBS = select(runs.c.job_id).distinct().where(runs.c.state == RUNNING)
DUE_RUNS = (select(*CLAIM_COLUMNS).join(jobs, jobs.c.id == runs.c.job_id)
            .where(runs.c.state == QUEUED, runs.c.due_at <= bindparam("now"))
            .order_by(runs.c.due_at, runs.c.id).limit(bindparam("limit"))
            .with_for_update(skip_locked=True, of=runs))
CLAIM = (update(runs).where(runs.c.id == bindparam("run_id"), runs.c.state == QUEUED)
         .values(state=RUNNING, claimed_by=bindparam("me"), hostname=bindparam("host"),
                 started_at=bindparam("now"), lease_until=bindparam("until")))
STARTED = (update(runs).where(runs.c.id == bindparam("run_id"))
           .values(pid=bindparam("b_pid"), pid_start=bindparam("b_pid_start"),
                   output_path=bindparam("b_output_path")))
FINISH = (update(runs).where(runs.c.id == bindparam("run_id"), runs.c.state == RUNNING,
                             runs.c.claimed_by == bindparam("me"))
          .values(state=bindparam("b_state"), exit_code=bindparam("b_exit_code"),
                  reason=bindparam("b_reason"), output_tail=bindparam("b_tail"),
                  finished_at=bindparam("b_finished_at"), lease_until=None))
# A run that started and finished since the last transaction (most short runs): its pid
# and its result in one statement.
FINISH_STARTED = FINISH.values(pid=bindparam("b_pid"), pid_start=bindparam("b_pid_start"),
                               output_path=bindparam("b_output_path"))
SKIP = (update(runs).where(runs.c.id == bindparam("run_id"), runs.c.state == QUEUED)
        .values(state=RunState.SKIPPED.value, finished_at=bindparam("now"),
                reason=bindparam("b_reason")))
NEXT_QUEUED = select(func.min(runs.c.due_at)).where(runs.c.state == QUEUED)
NEXT_QUEUED_AFTER = NEXT_QUEUED.where(runs.c.due_at > bindparam("after"))


def run_view(row: dict[str, Any]) -> dict[str, Any]:
    view = dict(row)
    started, finished = row.get("started_at"), row.get("finished_at")
    view["duration_s"] = (round((finished - started).total_seconds(), 3)
                          if started and finished else None)
    for key in ("occurrence", "due_at", "started_at", "finished_at", "lease_until"):
        if key in view:
            view[key] = iso(view[key])
    return view


class HotStatements:
    """What every run goes through, prepared once per engine (see prepared.py)."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.busy_jobs = Prepared(BUSY_JOBS, dialect)
        self.due_runs = Prepared(DUE_RUNS, dialect)
        self.claim = Prepared(CLAIM, dialect)
        self.started = Prepared(STARTED, dialect)
        self.finish = Prepared(FINISH, dialect)
        self.finish_started = Prepared(FINISH_STARTED, dialect)
        self.skip = Prepared(SKIP, dialect)
        self.attempt = Prepared(insert_ignore(engine, runs).values(
            job_id=bindparam("job_id"), occurrence=bindparam("occurrence"),
            attempt=bindparam("attempt"), trigger=bindparam("trigger"),
            state=QUEUED, due_at=bindparam("due_at"), created_at=bindparam("created_at")),
            dialect)


class RunQueries:
    engine: Engine
    _hot: HotStatements | None = None

    @property
    def hot(self) -> HotStatements:
        if self._hot is None:
            self._hot = HotStatements(self.engine)
        return self._hot

    # -- what users do ----------------------------------------------------------------------
    def request_run(self, name: str) -> int:
        """Queue a manual run now; the running scheduler picks it up within a second."""
        now = utcnow()
        with self.engine.begin() as connection:
            job_id = connection.execute(select(jobs.c.id).where(jobs.c.name == name)).scalar()
            if job_id is None:
                raise UnknownJob(name)
            result = connection.execute(runs.insert().values(
                job_id=job_id, occurrence=now, attempt=1, trigger="manual",
                state=RunState.QUEUED, due_at=now, created_at=now))
            bump_changes(connection)
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def list_runs(self, job: str | None = None, limit: int = 50,
                  state: str | None = None) -> list[dict[str, Any]]:
        query = select(*RUN_VIEW).join(jobs, jobs.c.id == runs.c.job_id)
        if job is not None:
            query = query.where(jobs.c.name == job)
        if state is not None:
            query = query.where(runs.c.state == state)
        query = query.order_by(runs.c.id.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [run_view(row_dict(row)) for row in connection.execute(query)]

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        query = (select(*RUN_VIEW, runs.c.output_path, runs.c.output_tail, runs.c.lease_until)
                 .join(jobs, jobs.c.id == runs.c.job_id).where(runs.c.id == run_id))
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return run_view(row_dict(row)) if row else None

    # -- what the work loop does ------------------------------------------------------------
    def next_run_due(self, after: datetime | None = None) -> datetime | None:
        with self.engine.connect() as connection:
            if after is None:
                return connection.execute(NEXT_QUEUED).scalar()
            return connection.execute(NEXT_QUEUED_AFTER, {"after": after}).scalar()

    def claim(self, scheduler_id: str, hostname: str, now: datetime, limit: int,
              lease: float) -> tuple[list[dict[str, Any]], bool]:
        """Atomically take up to `limit` due runs, applying each job's overlap policy.

        Returns the claimed runs (with what is needed to start them) and whether due runs
        were left waiting (on a free worker, the overlap policy or another scheduler).
        """
        with transaction(self.engine) as connection:
            return self._claim(connection, scheduler_id, hostname, now, limit, lease)

    def _claim(self, connection: Any, scheduler_id: str, hostname: str, now: datetime,
               limit: int, lease: float) -> tuple[list[dict[str, Any]], bool]:
        claimed: list[dict[str, Any]] = []
        waiting = False
        until = now + timedelta(seconds=lease)
        hot = self.hot
        due = hot.due_runs.mappings(connection, {"now": now, "limit": limit * 4}, raw=True)
        # Which jobs run already matters only to overlap policies other than allow.
        constrained = any(row["overlap"] != "allow" for row in due)
        busy = set(hot.busy_jobs.scalars(connection)) if constrained else set()
        for row in due:
            if len(claimed) >= limit:
                waiting = True
                break
            if row["job_id"] in busy and row["overlap"] != "allow":
                if row["overlap"] == "skip":
                    self._skip(connection, row["id"], now, "previous run still running")
                else:
                    waiting = True
                continue
            won = hot.claim.rowcount(connection, {"run_id": row["id"], "me": scheduler_id,
                                                  "host": hostname, "now": now,
                                                  "until": until})
            if won == 1:  # on SQLite the rowcount is the claim; on PostgreSQL the row lock
                busy.add(row["job_id"])
                claimed.append(hot.due_runs.convert(row))
            else:
                waiting = True
        return claimed, waiting

    def _skip(self, connection: Any, run_id: int, now: datetime, reason: str) -> None:
        self.hot.skip.rowcount(connection, {"run_id": run_id, "now": now, "b_reason": reason})

    def record_and_claim(self, scheduler_id: str, hostname: str,
                         started: list[dict[str, Any]], finished: list[dict[str, Any]],
                         claim: tuple[datetime, int, float] | None,
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """What workers reported since the last call, then a claim, in one transaction.

        `started`: run, pid, pid_start, output_path.  `finished`: run, state, exit_code,
        reason, tail, finished_at, and next_attempt (due_at, trigger) or None.  `claim`:
        (now, limit, lease), or None for recording only.  Returns the finished runs that
        were still ours (their next attempts are queued here too), the claimed runs, and
        whether due runs were left waiting.
        """
        with transaction(self.engine) as connection:
            ours = self._record(connection, scheduler_id, started, finished)
            if claim is None:
                return ours, [], False
            claimed, waiting = self._claim(connection, scheduler_id, hostname, *claim)
        return ours, claimed, waiting

    def _record(self, connection: Any, scheduler_id: str, started: list[dict[str, Any]],
                finished: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ours = []
        pids = {item["run"]["id"]: {"run_id": item["run"]["id"], "b_pid": item["pid"],
                                    "b_pid_start": item["pid_start"],
                                    "b_output_path": item["output_path"]}
                for item in started}
        for item in finished:
            check_transition(RunState.RUNNING, item["state"])  # workers report final states only
            values = {"run_id": item["run"]["id"], "me": scheduler_id,
                      "b_state": item["state"].value, "b_exit_code": item["exit_code"],
                      "b_reason": item["reason"], "b_tail": item["tail"],
                      "b_finished_at": item["finished_at"]}
            pid = pids.pop(item["run"]["id"], None)
            statement = self.hot.finish if pid is None else self.hot.finish_started
            won = statement.rowcount(connection, {**values, **(pid or {})}) == 1
            if not won:
                continue  # declared lost meanwhile: whoever did decides what follows
            ours.append(item)
            if item["next_attempt"] is not None:
                due_at, trigger = item["next_attempt"]
                self._insert_attempt(connection, item["run"], due_at, trigger)
        if pids:  # still running
            self.hot.started.execute_many(connection, list(pids.values()))
        return ours

    def _insert_attempt(self, connection: Any, run: dict[str, Any], due_at: datetime,
                        trigger: str) -> None:
        self.hot.attempt.rowcount(connection, {
            "job_id": run["job_id"], "occurrence": run["occurrence"],
            "attempt": run["attempt"] + 1, "trigger": trigger, "due_at": due_at,
            "created_at": utcnow()})

    def release_runs(self, scheduler_id: str, run_ids: list[int]) -> int:
        """Give claimed runs that were never started back to the queue, as if unclaimed."""
        check_transition(RunState.RUNNING, RunState.QUEUED)
        released = 0
        with self.engine.begin() as connection:
            for run_id in run_ids:
                released += connection.execute(
                    update(runs).where(runs.c.id == run_id, runs.c.state == RUNNING,
                                       runs.c.claimed_by == scheduler_id, runs.c.pid.is_(None))
                    .values(state=QUEUED, claimed_by=None, hostname=None, started_at=None,
                            lease_until=None)).rowcount
        return released

    def queue_attempt(self, run: dict[str, Any], due_at: datetime, trigger: str) -> None:
        """Another attempt of the same occurrence (retry, or resume after a shutdown)."""
        with transaction(self.engine) as connection:
            self._insert_attempt(connection, run, due_at, trigger)

    def renew_leases(self, scheduler_id: str, now: datetime, lease: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(runs).where(runs.c.claimed_by == scheduler_id,
                                                  runs.c.state == RunState.RUNNING)
                               .values(lease_until=now + timedelta(seconds=lease)))

    def abandoned_runs(self, now: datetime, hostname: str,
                       dead_here: list[str]) -> list[dict[str, Any]]:
        """Running runs whose scheduler is gone: lease expired, or found dead on this host."""
        query = (select(runs, jobs.c.retries, jobs.c.retry_delay_s)
                 .join(jobs, jobs.c.id == runs.c.job_id)
                 .where(runs.c.state == RunState.RUNNING,
                        (runs.c.lease_until < now) | runs.c.claimed_by.in_(dead_here)))
        with self.engine.connect() as connection:
            return [row_dict(row) for row in connection.execute(query)]

    def mark_lost(self, run_id: int, claimed_by: str | None, reason: str) -> bool:
        with self.engine.begin() as connection:
            return connection.execute(
                update(runs).where(runs.c.id == run_id, runs.c.state == RunState.RUNNING,
                                   runs.c.claimed_by == claimed_by)
                .values(state=RunState.LOST, reason=reason, finished_at=utcnow(),
                        lease_until=None)).rowcount == 1

    def running_schedulers_here(self, hostname: str, exclude: str) -> list[dict[str, Any]]:
        query = select(schedulers).where(schedulers.c.hostname == hostname,
                                         schedulers.c.stopped_at.is_(None),
                                         schedulers.c.id != exclude)
        with self.engine.connect() as connection:
            return [row_dict(row) for row in connection.execute(query)]
