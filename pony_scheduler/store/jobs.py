"""Queries about jobs: defining them, reading them, and turning occurrences into runs.

Times are aware UTC datetimes; durations are seconds.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    case,
    delete,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from pony_scheduler.actor import Actor
from pony_scheduler.errors import PonyError
from pony_scheduler.runstate import RunState
from pony_scheduler.scheduler.occurrences import Plan
from pony_scheduler.scheduler.runs import Trigger
from pony_scheduler.store import audit
from pony_scheduler.store.clock import ClockQueries
from pony_scheduler.store.common import bump_changes, insert_ignore, iso, loads, row_dict, utcnow
from pony_scheduler.store.tables import jobs, missed, runs

REMOVE_BATCH = 2000  # runs deleted per transaction by `pb job remove`
JOB_PAGE = 500  # jobs read per transaction by iter_jobs (pb job list, the API)
# In job values: the start deadline the schedule implies (occurrences.default_start_deadline),
# which applies only to jobs whose deadline was not given (start_deadline_auto).
DEFAULT_DEADLINE = "default_start_deadline_s"


class UnknownJob(PonyError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no job named {name!r}; see 'pb job list'")


class Purged(NamedTuple):
    """What purge_removed did: runs deleted, and "PATH: reason" of each output file it
    had to leave on disk."""

    deleted: int
    left: tuple[str, ...]


class Removal(NamedTuple):
    """What remove_job did: its runs still running (deleted at their end) and "PATH:
    reason" of each output file left on disk."""

    running: tuple[int, ...]
    left: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DueJob:
    """A job whose next occurrence is due: its schedule as stored, and its policy."""

    id: int
    name: str
    kind: str
    expr: str
    tz: str
    anchor: str
    next_due_at: datetime
    overlap: str
    catch_up: str
    retries: int
    retry_delay_s: float
    start_deadline_s: float | None
    max_queued: int
    jitter_s: float | None


@dataclass(frozen=True, slots=True)
class Materialize:
    """Turn a due job's occurrences into runs as `plan` says, if its next due time is
    still `expected_due` (another scheduler may have done it first)."""

    job_id: int
    expected_due: datetime
    plan: Plan
    missed_reason: str  # why plan.skipped and plan.uncounted were missed
    refused_reason: str  # why plan.refused were not queued


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "command" in out:
        out["command"] = json.dumps(out["command"])
    if "env" in out:
        out["env"] = json.dumps(out["env"] or {})
    if "secret_env" in out:
        out["secret_env"] = json.dumps(sorted(out["secret_env"] or []))
    return out


def job_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job as plain JSON-friendly data."""
    view = dict(row)
    view["command"] = loads(row.get("command"), [])
    view["env"] = loads(row.get("env"), {})
    view["secret_env"] = loads(row.get("secret_env"), [])
    for key in (
        "next_due_at",
        "created_at",
        "updated_at",
        "last_finished_at",
        "last_success_at",
        "removed_at",
    ):
        if key in view:
            view[key] = iso(view[key])
    view["last_run_at"] = view.get("last_finished_at")
    view["next_run_at"] = (
        view.get("next_due_at") if view.get("enabled") and not view.get("error") else None
    )
    return view


class JobQueries(ClockQueries):
    engine: Engine
    output_dir: str | None  # Store: where a removal may delete output files (files.py)

    def add_job(self, name: str, values: dict[str, Any], actor: Actor | None = None) -> int:
        """Insert job `name`, audited as `actor`'s; returns its id.  Raises PonyError if
        the name is taken."""
        now = utcnow()
        values = dict(values)
        default = values.pop(DEFAULT_DEADLINE, None)
        if "start_deadline_auto" not in values:
            values.update(start_deadline_auto=True, start_deadline_s=default)
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    jobs.insert().values(
                        name=name, created_at=now, updated_at=now, **_encode(values)
                    )
                )
                audit.record(connection, actor, "add", name, _summary(values))
                bump_changes(connection)
        except IntegrityError:
            raise PonyError(
                f"a job named {name!r} already exists; choose another name or "
                f"use 'pb job edit {name}'"
            ) from None
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def update_job(
        self, name: str, values: dict[str, Any], actor: Actor | None = None, action: str = "edit"
    ) -> None:
        """Change the given columns of job `name` and clear a set-aside error (it is
        evaluated again), audited as `actor`'s `action`.  Raises UnknownJob."""
        values = dict(values)
        # Before the default deadline becomes a CASE (review finding: the audit showed
        # "start_deadline_s=CASE WHEN (jobs.start_deadline_auto IS true) ...").
        summary = _summary(values) if action == "edit" else None
        default = values.pop(DEFAULT_DEADLINE, None)
        if default is not None and "start_deadline_auto" not in values:
            values["start_deadline_s"] = case(
                (jobs.c.start_deadline_auto.is_(True), default), else_=jobs.c.start_deadline_s
            )
        with self.engine.begin() as connection:
            result = connection.execute(
                update(jobs)
                .where(jobs.c.name == name, jobs.c.removed_at.is_(None))
                .values(updated_at=utcnow(), error=None, **_encode(values))
            )
            if result.rowcount == 0:
                raise UnknownJob(name)
            audit.record(connection, actor, action, name, summary)
            bump_changes(connection)

    def remove_job(self, name: str, actor: Actor | None = None) -> Removal:
        """Remove job `name`, its runs and their output files; returns the ids of its runs
        still running, which go on to their end (as cron's do when their line is deleted)
        and are deleted then, and the output files it had to leave (purge_removed).
        Raises UnknownJob.

        The job is renamed and unscheduled first (its name is free at once, its queued
        runs never start), then its runs go in batches of REMOVE_BATCH, each its own
        short transaction, so that a running scheduler is never blocked for long.  An
        interrupted removal, or one whose runs were still running, is finished by the
        scheduler's upkeep (purge_removed) once they end.
        """
        with self.engine.begin() as connection:
            job_id = connection.execute(
                select(jobs.c.id).where(jobs.c.name == name, jobs.c.removed_at.is_(None))
            ).scalar()
            if job_id is None:
                raise UnknownJob(name)
            connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    name=f".removed-{job_id}", removed_at=utcnow(), enabled=False, next_due_at=None
                )
            )
            audit.record(connection, actor, "remove", name)
            bump_changes(connection)
        purged = self.purge_removed()
        with self.engine.connect() as connection:
            running = tuple(
                connection.execute(
                    select(runs.c.id)
                    .where(runs.c.job_id == job_id, runs.c.state == RunState.RUNNING)
                    .order_by(runs.c.id)
                ).scalars()
            )
        return Removal(running, purged.left)

    def purge_removed(self, budget_s: float | None = None) -> Purged:
        """Delete the runs, output files and rows of removed jobs.

        `budget_s` (seconds, monotonic): stop after the batch that ends past it, at least
        one batch done - the scheduler's upkeep passes one so that a removal `pb job
        remove` left unfinished (interrupted, or runs still running then) is finished a
        slice at a time between iterations, never stalling the work loop for the whole
        job (review: 300,000 runs held it 20 s).  None: until nothing is left.

        An output file that cannot be removed (something else now at its path, a
        read-only or immutable file) is left where it is and named in the result; its run
        is deleted all the same.  It used to raise, which in the scheduler's upkeep
        stopped the scheduler, and every start after it (review finding: a poison pill)."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        left: list[str] = []
        with self.engine.connect() as connection:
            removed = list(
                connection.execute(
                    select(jobs.c.id).where(jobs.c.removed_at.is_not(None))
                ).scalars()
            )
        total = 0
        for job_id in removed:
            while batch := self._delete_batch(job_id, left):
                total += batch
                if deadline is not None and time.monotonic() >= deadline:
                    return Purged(total, tuple(left))
            with self.engine.begin() as connection:  # once its running runs ended
                if (
                    connection.execute(
                        select(runs.c.id).where(runs.c.job_id == job_id).limit(1)
                    ).first()
                    is None
                ):
                    connection.execute(delete(jobs).where(jobs.c.id == job_id))
        return Purged(total, tuple(left))

    def _delete_batch(self, job_id: int, left: list[str]) -> int:
        settled = (runs.c.job_id == job_id) & (runs.c.state != RunState.RUNNING)
        with self.engine.begin() as connection:
            rows = connection.execute(
                select(runs.c.id, runs.c.output_path)
                .where(settled)
                .order_by(runs.c.id)
                .limit(REMOVE_BATCH)
            ).all()
            if not rows:
                return 0
            for run_id, path in rows:
                if path and (why := _unlink(path, self.output_dir, run_id)):
                    left.append(f"{path}: {why}")
            connection.execute(delete(runs).where(settled, runs.c.id <= rows[-1][0]))
        return len(rows)

    def removals_pending(self) -> bool:
        """Whether a removed job still has rows to delete."""
        with self.engine.connect() as connection:
            return (
                connection.execute(
                    select(jobs.c.id).where(jobs.c.removed_at.is_not(None)).limit(1)
                ).first()
                is not None
            )

    def set_enabled(
        self,
        name: str,
        enabled: bool,
        next_due_at: datetime | None = None,
        actor: Actor | None = None,
    ) -> None:
        """Pause (runs already started go on; queued ones wait) or resume from
        `next_due_at`.  A pause notes when it began (the database's time; a second
        pause keeps the first's), which drop_paused reads.  Raises UnknownJob."""
        values: dict[str, Any] = {"enabled": enabled}
        if enabled:
            values["next_due_at"] = next_due_at
            values["paused_at"] = None
        else:
            since = case((jobs.c.enabled.is_(True), self.db_now()), else_=jobs.c.paused_at)
            values["paused_at"] = since
        self.update_job(name, values, actor, "resume" if enabled else "pause")

    def job_row(self, name: str) -> dict[str, Any] | None:
        """The stored row of job `name` as a dict, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(jobs).where(jobs.c.name == name, jobs.c.removed_at.is_(None))
            ).first()
        return row_dict(row) if row else None

    def get_job(self, name: str) -> dict[str, Any] | None:
        """Job `name` as job_view() shows it, or None."""
        row = self.job_row(name)
        return job_view(row) if row else None

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, by name, with its last result (kept on the job row: no run scan)."""
        return list(self.iter_jobs())

    def iter_jobs(
        self, after: str | None = None, limit: int | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """Jobs by name (those after `after`, at most `limit`), read JOB_PAGE at a time,
        each page by name from the index in a transaction of its own: memory stays flat
        however many jobs there are, and a slow reader (`pb job list --all | less`) holds
        no transaction meanwhile (one held SQLite's write lock, and so the scheduler; on
        PostgreSQL the idle-in-transaction limit would end it).  Not a snapshot: a job
        added or removed while the pages are read may or may not be in them."""
        remaining = limit
        while remaining is None or remaining > 0:
            size = JOB_PAGE if remaining is None else min(JOB_PAGE, remaining)
            query = select(jobs).where(jobs.c.removed_at.is_(None)).order_by(jobs.c.name)
            if after is not None:
                query = query.where(jobs.c.name > after)
            with self.engine.connect() as connection:
                page = [job_view(row_dict(row)) for row in connection.execute(query.limit(size))]
            yield from page
            if len(page) < size:
                return
            after = page[-1]["name"]
            if remaining is not None:
                remaining -= len(page)

    def count_jobs(self) -> int:
        """How many jobs there are."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count()).select_from(jobs).where(jobs.c.removed_at.is_(None))
                ).scalar()
                or 0
            )

    # -- for the work loop ------------------------------------------------------------------
    def next_job_due(self) -> datetime | None:
        """The earliest next occurrence of an enabled job, or None."""
        with self.engine.connect() as connection:
            return connection.execute(
                select(func.min(jobs.c.next_due_at)).where(jobs.c.enabled.is_(True))
            ).scalar()

    def due_jobs(self, now: datetime, limit: int = 500) -> list[DueJob]:
        """Up to `limit` enabled jobs whose next occurrence is at or before `now`."""
        query = (
            select(
                jobs.c.id,
                jobs.c.name,
                jobs.c.schedule_kind,
                jobs.c.schedule_expr,
                jobs.c.schedule_tz,
                jobs.c.schedule_anchor,
                jobs.c.next_due_at,
                jobs.c.overlap,
                jobs.c.catch_up,
                jobs.c.retries,
                jobs.c.retry_delay_s,
                jobs.c.start_deadline_s,
                jobs.c.max_queued,
                jobs.c.jitter_s,
            )
            .where(jobs.c.enabled.is_(True), jobs.c.next_due_at <= now)
            .order_by(jobs.c.next_due_at)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [_due_job(row) for row in connection.execute(query)]

    def queued_count(self, job_id: int) -> int:
        """How many runs of a job wait in the queue."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count()).where(
                        runs.c.job_id == job_id, runs.c.state == RunState.QUEUED
                    )
                ).scalar()
                or 0
            )

    def set_aside(self, job_id: int, reason: str) -> None:
        """Stop scheduling a job the daemon cannot evaluate; `pb job edit` clears it."""
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs).where(jobs.c.id == job_id).values(error=reason, next_due_at=None)
            )

    def shift_interval_jobs(self, by: timedelta) -> int:
        """Move every interval job's grid by `by` (the wall clock was stepped by `by`):
        they follow elapsed time.  Returns how many moved."""
        with self.engine.begin() as connection:
            rows = connection.execute(
                select(jobs.c.id, jobs.c.schedule_anchor, jobs.c.next_due_at).where(
                    jobs.c.schedule_kind == "every"
                )
            ).all()
            for job_id, anchor, due in rows:
                values: dict[str, Any] = {
                    "schedule_anchor": (datetime.fromisoformat(anchor) + by).isoformat()
                }
                if due is not None:
                    values["next_due_at"] = due + by
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            # Their queued runs move with them, and so do retries of any job: a retry waits
            # out a delay, not a wall-clock time.
            interval = [job_id for job_id, _, _ in rows]
            waiting = connection.execute(
                select(runs.c.id, runs.c.due_at).where(
                    runs.c.state == RunState.QUEUED,
                    runs.c.job_id.in_(interval)
                    | runs.c.trigger.in_([Trigger.RETRY.value, Trigger.RESUME.value]),
                )
            ).all()
            for run_id, due in waiting:
                connection.execute(update(runs).where(runs.c.id == run_id).values(due_at=due + by))
        return len(rows)

    def materialize(self, items: list[Materialize], now: datetime) -> list[int]:
        """Turn due occurrences into runs and advance each job, in one transaction.

        Returns the ids of the jobs this call advanced.  The conditional UPDATE of the
        job's next due time makes one scheduler the winner when several share a
        database; the unique (job, occurrence, attempt) key makes a repeat harmless.
        Runs of one catch-up decision share a batch (they run one after another).
        """
        if not items:
            return []
        with self.engine.begin() as connection:
            # Which jobs are still where this plan found them: read under the write lock
            # (SQLite's BEGIN IMMEDIATE; FOR UPDATE on PostgreSQL), so the updates below
            # cannot race another scheduler; a herd of thousands costs a few statements.
            current = dict(
                connection.execute(
                    select(jobs.c.id, jobs.c.next_due_at)
                    .where(jobs.c.id.in_([item.job_id for item in items]))
                    .with_for_update()
                ).all()
            )
            won = [item for item in items if current.get(item.job_id) == item.expected_due]
            if not won:
                return []
            _advance(connection, won)
            _queue(connection, won, now)
            gaps = [
                {
                    "job_id": item.job_id,
                    "first_occurrence": item.plan.uncounted.first,
                    "last_occurrence": item.plan.uncounted.last,
                    "count": item.plan.uncounted.count,
                    "reason": item.missed_reason,
                    "recorded_at": now,
                }
                for item in won
                if item.plan.uncounted is not None
            ]
            if gaps:
                connection.execute(missed.insert(), gaps)
        return [item.job_id for item in won]

    def missed_summaries(self, job: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Outages' missed occurrences counted beyond those recorded one by one."""
        query = (
            select(
                missed.c.id,
                jobs.c.name.label("job"),
                missed.c.first_occurrence,
                missed.c.last_occurrence,
                missed.c.count,
                missed.c.reason,
                missed.c.recorded_at,
            )
            .join(jobs, jobs.c.id == missed.c.job_id)
            .order_by(missed.c.id.desc())
            .limit(limit)
        )
        if job is not None:
            query = query.where(jobs.c.name == job)
        with self.engine.connect() as connection:
            rows = [row_dict(row) for row in connection.execute(query)]
        for row in rows:
            for key in ("first_occurrence", "last_occurrence", "recorded_at"):
                row[key] = iso(row[key])
        return rows


def _summary(values: dict[str, Any]) -> str:
    """What an add or edit set, for the audit trail: option names, and the command and
    schedule (never environment values: they may be secrets)."""
    shown = []
    for key in sorted(values):
        if key == DEFAULT_DEADLINE or key.startswith("schedule_") or key == "next_due_at":
            continue
        value = values[key]
        if key == "command":
            shown.append(f"command={' '.join(map(str, value))}")
        elif key == "env":
            shown.append(f"env={','.join(sorted(value or {}))}")
        elif key == "umask" and isinstance(value, int):
            shown.append(f"umask={value:03o}")  # as umask(1) and pb job show write it
        else:
            shown.append(f"{key}={value}")
    if "schedule_kind" in values:
        kind = values["schedule_kind"]
        # The zone only where it means something (cron, --at); no empty expression.
        parts = (
            kind,
            values.get("schedule_expr"),
            values.get("schedule_tz") if kind in ("cron", "at") else None,
        )
        shown.insert(0, "schedule=" + " ".join(str(part) for part in parts if part))
    return "; ".join(shown)


def _due_job(row: Any) -> DueJob:
    fields: tuple[Any, ...] = tuple(row)
    return DueJob(*fields)


def _rows(item: Materialize, now: datetime) -> Iterator[dict[str, Any]]:
    plan = item.plan
    base = {
        "job_id": item.job_id,
        "attempt": 1,
        "created_at": now,
        "exit_code": None,
        "started_at": None,
    }
    for moment in plan.skipped:
        yield {
            **base,
            "occurrence": moment,
            "state": RunState.SKIPPED.value,
            "trigger": Trigger.CATCH_UP.value,
            "due_at": moment,
            "finished_at": now,
            "reason": item.missed_reason,
            "batch": None,
        }
    for moment in plan.refused:
        yield {
            **base,
            "occurrence": moment,
            "state": RunState.SKIPPED.value,
            "trigger": Trigger.SCHEDULE.value,
            "due_at": moment,
            "finished_at": now,
            "reason": item.refused_reason,
            "batch": None,
        }
    batch = int(plan.to_run[0].timestamp() * 1000) if plan.batch else None
    catch_up = set(plan.catch_up)
    for moment in plan.to_run:
        late = moment in catch_up
        # A run the catch-up policy chose is due from the decision on: its start deadline
        # counts from now, not from the occurrence it serves.  A set runs oldest first,
        # in the order of its ids (the queue's order is due time, then id).
        yield {
            **base,
            "occurrence": moment,
            "state": RunState.QUEUED.value,
            "trigger": (Trigger.CATCH_UP if late else Trigger.SCHEDULE).value,
            "due_at": now if late or batch else moment,
            "finished_at": None,
            "reason": None,
            "batch": batch,
        }


def _advance(connection: Connection, won: list[Materialize]) -> None:
    """Each job's next due time: one UPDATE per distinct value (a herd shares one)."""
    by_next: dict[datetime | None, list[int]] = defaultdict(list)
    for item in won:
        by_next[item.plan.next_due].append(item.job_id)
    for next_due, ids in by_next.items():
        connection.execute(update(jobs).where(jobs.c.id.in_(ids)).values(next_due_at=next_due))


def _queue(connection: Connection, won: list[Materialize], now: datetime) -> None:
    """Insert the runs of the won plans.  Jobs whose plans are alike (a top-of-the-minute
    herd: same occurrences, same reasons) get each of their runs from one INSERT ...
    SELECT over their ids, rather than a row of parameters per job; a job alone with its
    plan gets its rows as before.  A job's own runs are inserted in _rows' order, so its
    ids keep that order (a catch-up set runs oldest first, by id), and jobs alike are
    taken by id, the order they were due in."""
    alike: dict[tuple[Plan, str, str], list[Materialize]] = defaultdict(list)
    for item in won:
        alike[(item.plan, item.missed_reason, item.refused_reason)].append(item)
    single: list[dict[str, Any]] = []
    for group in alike.values():
        if len(group) == 1:
            single += _rows(group[0], now)
            continue
        ids = sorted(item.job_id for item in group)
        for row in _rows(group[0], now):
            connection.execute(_insert_for_jobs(connection, row, ids))
    if single:
        connection.execute(insert_ignore(connection, runs), single)


def _insert_for_jobs(connection: Connection, row: dict[str, Any], ids: list[int]) -> Insert:
    """INSERT ... SELECT: `row` (job_id aside) once for each job of `ids`, ignoring a run
    that exists already (the unique key decides, as for single rows)."""
    values = [
        literal(value, runs.c[key].type) if value is not None else null()
        for key, value in row.items()
        if key != "job_id"
    ]
    source = select(jobs.c.id, *values).where(jobs.c.id.in_(ids)).order_by(jobs.c.id)
    names = ["job_id", *(key for key in row if key != "job_id")]
    return insert_ignore(connection, runs).from_select(names, source)


# Why a path was left because it is not the run's own file here (a forged or foreign
# path): it is named as such, rather than as a file to remove by hand.
REFUSED = "left alone, "


def left_line(left: str) -> str:
    """How `pb job remove` and the scheduler's log name an output file a removal left
    ("PATH: why", Purged.left): a refused path is never one to remove by hand."""
    if f": {REFUSED}" in left:
        return f"Output path {left}"
    return f"Output file left on disk, remove it by hand: {left}"


def _unlink(path: str, directory: str | None, run_id: int) -> str:
    """Remove run `run_id`'s output file from `directory` (files.unlink_output): '' when
    it is gone (or never was), else why not."""
    from pony_scheduler.files import unlink_output
    from pony_scheduler.pathtrust import UnsafePath

    if directory is None:
        return f"{REFUSED}no output directory given"
    try:
        unlink_output(path, directory, run_id)
    except UnsafePath as exc:
        return REFUSED + str(exc).removeprefix(f"{path} ").removesuffix("; ")
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""
