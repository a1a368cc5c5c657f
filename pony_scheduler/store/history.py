"""What users read and ask of runs: their history, one run, a manual run."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from pony_scheduler.actor import Actor
from pony_scheduler.runstate import RunState
from pony_scheduler.scheduler.runs import Trigger
from pony_scheduler.store import audit
from pony_scheduler.store.clock import ClockQueries
from pony_scheduler.store.common import bump_changes, iso, row_dict
from pony_scheduler.store.jobs import UnknownJob
from pony_scheduler.store.tables import jobs, runs

QUEUED = RunState.QUEUED.value
RUN_VIEW = (
    runs.c.id,
    jobs.c.name.label("job"),
    runs.c.occurrence,
    runs.c.attempt,
    runs.c.state,
    runs.c.trigger,
    runs.c.due_at,
    runs.c.started_at,
    runs.c.finished_at,
    runs.c.exit_code,
    runs.c.signal,
    runs.c.reason,
    runs.c.pid,
    runs.c.hostname,
    runs.c.claimed_by,
)


def run_view(row: dict[str, Any], exact_tail: bool = False) -> dict[str, Any]:
    """A run row as JSON-friendly data for `pb runs` and the gateway; with `exact_tail`
    its output_tail stays the stored bytes (`pb runs show --raw`), not JSON-friendly."""
    view = dict(row)
    started, finished = row.get("started_at"), row.get("finished_at")
    view["duration_s"] = (
        round((finished - started).total_seconds(), 3) if started and finished else None
    )
    for key in ("occurrence", "due_at", "started_at", "finished_at", "lease_until"):
        if key in view:
            view[key] = iso(view[key])
    if isinstance(view.get("output_tail"), bytes) and not exact_tail:
        view["output_tail"] = view["output_tail"].decode(errors="replace")
    return view


class HistoryQueries(ClockQueries):
    engine: Engine

    def request_run(self, name: str, actor: Actor | None = None) -> int:
        """Queue a manual run of job `name` now (the database's now: another host's
        scheduler judges it by that clock), audited as `actor`'s; returns its id.  Raises
        UnknownJob."""
        now = self.db_now()
        with self.engine.begin() as connection:
            job_id = connection.execute(
                select(jobs.c.id).where(jobs.c.name == name, jobs.c.removed_at.is_(None))
            ).scalar()
            if job_id is None:
                raise UnknownJob(name)
            result = connection.execute(
                runs.insert().values(
                    job_id=job_id,
                    occurrence=now,
                    attempt=1,
                    trigger=Trigger.MANUAL.value,
                    state=QUEUED,
                    due_at=now,
                    created_at=now,
                )
            )
            run_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            audit.record(connection, actor, "run", name, f"run {run_id}")
            bump_changes(connection)
        return run_id

    def list_runs(
        self, job: str | None = None, limit: int = 50, state: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest `limit` runs, newest first, of every job or of `job`."""
        query = select(*RUN_VIEW).join(jobs, jobs.c.id == runs.c.job_id)
        if job is not None:
            query = query.where(jobs.c.name == job)
        if state is not None:
            query = query.where(runs.c.state == state)
        query = query.order_by(runs.c.id.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [run_view(row_dict(row)) for row in connection.execute(query)]

    def get_run(self, run_id: int, exact_tail: bool = False) -> dict[str, Any] | None:
        """One run with its output path, tail and lease (run_view); None if there is
        none.  The tail is text (bytes that are not UTF-8 as U+FFFD), or with
        `exact_tail` the bytes stored."""
        query = (
            select(
                *RUN_VIEW,
                runs.c.output_path,
                runs.c.output_tail,
                runs.c.lease_until,
                runs.c.epoch,
                runs.c.leftovers,
                runs.c.peak_memory,
                runs.c.cpu_s,
                runs.c.containment,
            )
            .join(jobs, jobs.c.id == runs.c.job_id)
            .where(runs.c.id == run_id)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return run_view(row_dict(row), exact_tail) if row else None

    def next_attempt_of(self, run_id: int) -> int | None:
        """The id of the attempt after run `run_id` (a retry or a resume), or None."""
        later = runs.alias("later")
        query = (
            select(later.c.id)
            .join(
                runs,
                (runs.c.job_id == later.c.job_id)
                & (runs.c.occurrence == later.c.occurrence)
                & (later.c.attempt == runs.c.attempt + 1),
            )
            .where(runs.c.id == run_id)
        )
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()
