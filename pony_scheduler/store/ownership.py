"""Who holds a running run: lease renewal, hand-over (adoption), requeueing runs never
started, and declaring lost the runs whose holder is gone."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update

from pony_scheduler.runstate import RunState
from pony_scheduler.scheduler.runs import Abandoned, Holding, Settlement, Trigger
from pony_scheduler.store.common import row_dict
from pony_scheduler.store.prepared import transaction
from pony_scheduler.store.runs import CLAIM_COLUMNS, QUEUED, Finished, RunQueries, run_from
from pony_scheduler.store.tables import jobs, runs, schedulers
from pony_scheduler.store.transitions import Adopt, Claimant, Drop, Lose, Release


class OwnershipQueries(RunQueries):
    def drop_paused(self, name: str, now: datetime) -> int:
        """Skip the queued occurrences of paused job `name` that came due while it was
        paused (since jobs.paused_at); returns how many.  Called before it is resumed, so
        that none of them starts late.  Runs queued before the pause wait and run after
        it (README); so do manual runs (someone asked for them), retries and resumes of
        runs that started before it: they are no new occurrences."""
        query = (
            select(runs.c.id)
            .join(jobs, jobs.c.id == runs.c.job_id)
            .where(
                jobs.c.name == name,
                jobs.c.enabled.is_(False),
                runs.c.state == QUEUED,
                runs.c.due_at <= now,
                # due while paused: not one that was due, and waiting, before the pause
                or_(jobs.c.paused_at.is_(None), runs.c.due_at >= jobs.c.paused_at),
                runs.c.trigger.in_([Trigger.SCHEDULE.value, Trigger.CATCH_UP.value]),
            )
        )
        reason = "not run: its job was paused when it was due"
        with self.engine.connect() as connection:  # paused: nothing claims them meanwhile
            ids = list(connection.execute(query).scalars())
        with transaction(self.engine) as connection:
            dropped = sum(
                self.hot.transitions.write(connection, Drop(run_id, RunState.SKIPPED, reason, now))
                for run_id in ids
            )
        with self.engine.begin() as connection:
            # Those that waited through the pause are due from now: their start deadline
            # counts from the resume, not from a time the pause kept them from starting.
            connection.execute(
                update(runs)
                .where(
                    runs.c.job_id == select(jobs.c.id).where(jobs.c.name == name).scalar_subquery(),
                    runs.c.state == QUEUED,
                    runs.c.due_at < now,
                    runs.c.trigger != Trigger.MANUAL.value,
                )
                .values(due_at=now)
            )
        return dropped

    def release_runs(self, held: list[tuple[int, int]]) -> int:
        """Give claimed runs that never started, as (run id, epoch), back to the queue;
        returns how many."""
        with transaction(self.engine) as connection:
            return sum(
                self.hot.transitions.write(connection, Release(run_id, epoch))
                for run_id, epoch in held
            )

    def adopt(
        self, me: Claimant, held: list[tuple[int, int]], now: datetime, lease: float
    ) -> list[Holding]:
        """Take over running runs the run keeper holds, as (run id, epoch): a hand-over
        from the scheduler that started them.  Returns those adopted; a run the database
        no longer has running at that epoch (another scheduler declared it lost) is not."""
        until = now + timedelta(seconds=lease)
        with transaction(self.engine) as connection:
            adopted = [
                run_id
                for run_id, epoch in held
                if self.hot.transitions.write(connection, Adopt(run_id, epoch, me, until))
            ]
        return list(self.holdings(adopted).values())

    def holdings(self, run_ids: list[int]) -> dict[int, Holding]:
        """Running runs by id, as the database has them (ids not running are left out)."""
        if not run_ids:
            return {}
        query = (
            select(*CLAIM_COLUMNS, runs.c.started_at)
            .join(jobs, jobs.c.id == runs.c.job_id)
            .where(runs.c.id.in_(run_ids), runs.c.state == RunState.RUNNING)
        )
        with self.engine.connect() as connection:
            rows = [row_dict(row) for row in connection.execute(query)]
        return {row["id"]: Holding(run_from(row), row["epoch"], row["started_at"]) for row in rows}

    def renew_leases(self, scheduler_id: str, now: datetime, lease: float) -> dict[int, int]:
        """Extend the lease of every run `scheduler_id` holds to `now` + `lease` seconds;
        returns them as {run id: epoch} (a run missing there is no longer ours)."""
        mine = (runs.c.claimed_by == scheduler_id) & (runs.c.state == RunState.RUNNING)
        with self.engine.begin() as connection:
            connection.execute(
                update(runs).where(mine).values(lease_until=now + timedelta(seconds=lease))
            )
            return {
                row.id: row.epoch
                for row in connection.execute(select(runs.c.id, runs.c.epoch).where(mine))
            }

    def abandoned_runs(
        self, now: datetime, dead_here: list[str], expired: bool = True
    ) -> list[Abandoned]:
        """Running runs whose scheduler is gone: found dead here (`dead_here`, scheduler
        ids) or, when `expired`, with a lease that ended before `now` (database time)."""
        if not dead_here and not expired:
            return []
        gone_when: ColumnElement[bool] = runs.c.claimed_by.in_(dead_here)
        if expired:
            gone_when = gone_when | (runs.c.lease_until < now)
        # The running runs first (the state index), then their jobs: with statistics
        # (ANALYZE) SQLite otherwise plans a scan of every job for this join.
        gone = (
            select(runs.c.id).where(runs.c.state == RunState.RUNNING, gone_when).scalar_subquery()
        )
        query = (
            select(
                *CLAIM_COLUMNS,
                runs.c.claimed_by,
                runs.c.host,
                runs.c.pid,
                runs.c.pid_start,
                runs.c.started_at,
            )
            .join(jobs, jobs.c.id == runs.c.job_id)
            .where(runs.c.id.in_(gone))
        )
        with self.engine.connect() as connection:
            rows = [row_dict(row) for row in connection.execute(query)]
        return [
            Abandoned(
                run_from(row),
                row["epoch"],
                row["claimed_by"],
                row["host"],
                row["pid"],
                row["pid_start"],
                row["started_at"],
            )
            for row in rows
        ]

    def settle_lost(
        self, lost: Abandoned, settlement: Settlement, now: datetime, holder_dead: bool = False
    ) -> bool:
        """Write a lost run's settlement and queue its retry.  Guarded by its epoch and
        holder and, unless the holder was found dead, by its lease being still expired at
        `now` (the database's time): False if its host renewed it meanwhile or it no
        longer runs under that holder (transitions.Lose)."""
        move = Lose(settlement, lost.epoch, lost.claimed_by or "", now, holder_dead)
        with transaction(self.engine) as connection:
            if not self.hot.transitions.write(connection, move):
                return False
            if settlement.next_attempt is not None:
                self._insert_attempt(
                    connection,
                    lost.run,
                    settlement.next_attempt.due_at,
                    settlement.next_attempt.trigger,
                )
            # With its start, so that its last duration is the one `pb runs` shows
            # (review finding: none).
            found = Finished(lost.run, lost.epoch, settlement, None, lost.started_at)
            self._last_results(connection, [found])
            return True

    def predecessors(self, machine: str, home: str, exclude: str) -> list[dict[str, Any]]:
        """Schedulers of `home` on machine `machine` (machine-id(5)) not recorded as
        stopped, other than `exclude`."""
        query = select(schedulers).where(
            schedulers.c.machine_id == machine,
            schedulers.c.home == home,
            schedulers.c.stopped_at.is_(None),
            schedulers.c.id != exclude,
        )
        with self.engine.connect() as connection:
            return [row_dict(row) for row in connection.execute(query)]

    def forget_future_times(self, exclude: str, now: datetime) -> None:
        """Bring the heartbeats and stops other schedulers wrote ahead of `now` (a clock
        stepped back since) back to `now`, so that the step is handled once, not at
        every start until the clock catches up (latest_heartbeat)."""
        with self.engine.begin() as connection:
            for column in (schedulers.c.heartbeat_at, schedulers.c.stopped_at):
                connection.execute(
                    update(schedulers)
                    .where(schedulers.c.id != exclude, column > now)
                    .values({column.name: now})
                )

    def latest_heartbeat(self, exclude: str) -> datetime | None:
        """The latest time any scheduler but `exclude` wrote, as a heartbeat or as its
        stop (database time); None if there was none."""
        query = select(
            func.max(schedulers.c.heartbeat_at), func.max(schedulers.c.stopped_at)
        ).where(schedulers.c.id != exclude)
        with self.engine.connect() as connection:
            times = connection.execute(query).one()
        return max((t for t in times if t is not None), default=None)

    def any_scheduler_since(self, since: datetime) -> bool:
        """Whether any scheduler not recorded as stopped sent a heartbeat after `since`
        (database time)."""
        query = (
            select(schedulers.c.id)
            .where(schedulers.c.stopped_at.is_(None), schedulers.c.heartbeat_at > since)
            .limit(1)
        )
        with self.engine.connect() as connection:
            return connection.execute(query).first() is not None

    def live_schedulers(self, machine: str, since: datetime) -> list[dict[str, Any]]:
        """Schedulers recorded on machine id `machine` that have not stopped and sent a
        heartbeat after `since` (database time): this host's, and any clone's."""
        query = select(schedulers).where(
            schedulers.c.machine_id == machine,
            schedulers.c.stopped_at.is_(None),
            schedulers.c.heartbeat_at > since,
        )
        with self.engine.connect() as connection:
            return [row_dict(row) for row in connection.execute(query)]
