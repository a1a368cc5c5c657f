"""Queries about jobs: defining them, reading them, and turning occurrences into runs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from pony_scheduler.errors import PonyError
from pony_scheduler.runstate import RunState
from pony_scheduler.store.common import bump_changes, insert_ignore, iso, loads, row_dict, utcnow
from pony_scheduler.store.tables import jobs, runs

JOB_COLUMNS = ("command", "shell", "schedule_kind", "schedule_expr", "schedule_tz",
               "schedule_anchor", "timeout_s", "retries", "retry_delay_s", "overlap",
               "catch_up", "cwd", "env", "enabled", "next_due_at")


class UnknownJob(PonyError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no job named {name!r}; see 'pb job list'")


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "command" in out:
        out["command"] = json.dumps(out["command"])
    if "env" in out:
        out["env"] = json.dumps(out["env"] or {})
    return out


def job_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job as plain JSON-friendly data."""
    view = dict(row)
    view["command"] = loads(row.get("command"), [])
    view["env"] = loads(row.get("env"), {})
    for key in ("next_due_at", "created_at", "updated_at", "last_run_at"):
        if key in view:
            view[key] = iso(view[key])
    view["next_run_at"] = view.get("next_due_at") if view.get("enabled") else None
    return view


class JobQueries:
    engine: Engine

    def add_job(self, name: str, values: dict[str, Any]) -> int:
        now = utcnow()
        try:
            with self.engine.begin() as connection:
                result = connection.execute(jobs.insert().values(
                    name=name, created_at=now, updated_at=now, **_encode(values)))
                bump_changes(connection)
        except IntegrityError:
            raise PonyError(f"a job named {name!r} already exists; choose another name or "
                            f"use 'pb job edit {name}'") from None
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def update_job(self, name: str, values: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            result = connection.execute(update(jobs).where(jobs.c.name == name)
                                        .values(updated_at=utcnow(), **_encode(values)))
            if result.rowcount == 0:
                raise UnknownJob(name)
            bump_changes(connection)

    def remove_job(self, name: str) -> None:
        with self.engine.begin() as connection:
            job_id = connection.execute(select(jobs.c.id).where(jobs.c.name == name)).scalar()
            if job_id is None:
                raise UnknownJob(name)
            connection.execute(delete(runs).where(runs.c.job_id == job_id))
            connection.execute(delete(jobs).where(jobs.c.id == job_id))
            bump_changes(connection)

    def set_enabled(self, name: str, enabled: bool, next_due_at: datetime | None = None) -> None:
        values: dict[str, Any] = {"enabled": enabled}
        if enabled:
            values["next_due_at"] = next_due_at
        self.update_job(name, values)

    def job_row(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(jobs).where(jobs.c.name == name)).first()
        return row_dict(row) if row else None

    def get_job(self, name: str) -> dict[str, Any] | None:
        found = self.list_jobs(name=name)
        return found[0] if found else None

    def list_jobs(self, name: str | None = None) -> list[dict[str, Any]]:
        """Jobs with their most recent finished run's state and time."""
        last = (select(runs.c.job_id, func.max(runs.c.id).label("last_id"))
                .where(runs.c.state.notin_([RunState.QUEUED, RunState.RUNNING]))
                .group_by(runs.c.job_id).subquery())
        query = (select(jobs, runs.c.state.label("last_state"),
                        runs.c.finished_at.label("last_run_at"))
                 .outerjoin(last, last.c.job_id == jobs.c.id)
                 .outerjoin(runs, runs.c.id == last.c.last_id)
                 .order_by(jobs.c.name))
        if name is not None:
            query = query.where(jobs.c.name == name)
        with self.engine.connect() as connection:
            return [job_view(row_dict(row)) for row in connection.execute(query)]

    # -- for the work loop ------------------------------------------------------------------
    def next_job_due(self) -> datetime | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(func.min(jobs.c.next_due_at)).where(jobs.c.enabled.is_(True))).scalar()

    def due_jobs(self, now: datetime, limit: int = 500) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(jobs).where(jobs.c.enabled.is_(True), jobs.c.next_due_at <= now)
                .order_by(jobs.c.next_due_at).limit(limit))
            return [row_dict(row) for row in rows]

    def materialize(self, job_id: int, expected_due: datetime, to_run: list[datetime],
                    skipped: list[datetime], next_due: datetime | None,
                    trigger: str = "schedule") -> bool:
        """Turn occurrences into runs and advance the job, atomically.

        The conditional UPDATE makes one scheduler the winner when several share a
        database; the unique (job, occurrence, attempt) key makes a repeat harmless.
        """
        now = utcnow()
        with self.engine.begin() as connection:
            moved = connection.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.next_due_at == expected_due)
                .values(next_due_at=next_due)).rowcount
            if moved != 1:
                return False
            rows = [dict(job_id=job_id, occurrence=o, attempt=1, state=RunState.SKIPPED,
                         trigger="catch_up", due_at=o, created_at=now, finished_at=now,
                         reason="missed: no scheduler was running at its time") for o in skipped]
            rows += [dict(job_id=job_id, occurrence=o, attempt=1, state=RunState.QUEUED,
                          trigger=trigger if o == expected_due else "catch_up", due_at=o,
                          created_at=now, finished_at=None, reason=None) for o in to_run]
            for row in rows:
                connection.execute(insert_ignore(connection, runs).values(**row))
        return True
