"""The store on SQLite and on the real PostgreSQL: atomic claims, no duplicate runs,
migrations."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError

from pony_scheduler.errors import PonyError
from pony_scheduler.runstate import RunState
from pony_scheduler.scheduler import occurrences, runs
from pony_scheduler.scheduler.runs import Ending, Outcome, Started
from pony_scheduler.store import Store, migrate
from pony_scheduler.store.common import utcnow
from pony_scheduler.store.jobs import Materialize
from pony_scheduler.store.runs import ClaimRequest, Finished
from pony_scheduler.store.transitions import Claimant
from tests.conftest import Pb


def me(scheduler: str, hostname: str = "host") -> Claimant:
    return Claimant(scheduler, hostname, f"machine-of-{hostname}:boot")


def request(limit: int, now: datetime | None = None) -> ClaimRequest:
    """A claim as the loop makes it, with the real admission policy."""
    now = now or utcnow()
    capacity = runs.Capacity(now - timedelta(minutes=1), 4)
    return ClaimRequest(now, limit, 60, lambda run, job: runs.admit(run, job, capacity, now))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pony.db'}"
    else:
        yield request.getfixturevalue("pg_url")


def job_values(now_offset: float = 0) -> dict[str, object]:
    return {
        "command": ["true"],
        "shell": False,
        "schedule_kind": "manual",
        "schedule_expr": "",
        "schedule_tz": "UTC",
        "schedule_anchor": "",
        "timeout_s": None,
        "retries": 0,
        "retry_delay_s": 1.0,
        "overlap": "allow",
        "catch_up": "once",
        "cwd": None,
        "env": {},
        "enabled": True,
        "next_due_at": utcnow() + timedelta(seconds=now_offset),
    }


def test_each_queued_run_is_claimed_exactly_once(db_url: str) -> None:
    store = Store.open(db_url)
    store.add_job("j", job_values())
    for _ in range(200):
        store.request_run("j")
    stores = [Store.open(db_url) for _ in range(4)]
    for index, other in enumerate(stores):
        other.scheduler_id = f"s{index}"

    def drain(worker: Store) -> list[int]:
        got: list[int] = []
        while True:
            batch, _ = worker.claim(me(worker.scheduler_id or ""), request(7))
            if not batch:
                return got
            got += [item.run.id for item in batch]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(drain, stores))
    claimed = [run_id for result in results for run_id in result]
    assert len(claimed) == 200 and len(set(claimed)) == 200
    assert Counter(r["state"] for r in store.list_runs(limit=500)) == {"running": 200}
    for other in [store, *stores]:
        other.close()


def test_an_occurrence_becomes_one_run_however_many_schedulers(db_url: str) -> None:
    store = Store.open(db_url)
    store.add_job("j", job_values(-1))
    job = store.due_jobs(utcnow())[0]
    due = job.next_due_at
    plan = occurrences.Plan(to_run=(due,), next_due=due + timedelta(hours=1))
    item = Materialize(job.id, due, plan, "missed", "full")
    stores = [Store.open(db_url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        won = list(pool.map(lambda s: s.materialize([item], utcnow()), stores))
    assert won.count([job.id]) == 1
    assert len(store.list_runs()) == 1
    # even a repeat that got past the conditional update cannot add a second row
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET next_due_at = (SELECT occurrence FROM runs)"))
    assert store.materialize([item], utcnow()) == [job.id]
    assert len(store.list_runs()) == 1
    for other in [store, *stores]:
        other.close()


def test_old_schema_is_upgraded_and_newer_refused(db_url: str) -> None:
    engine = create_engine(db_url)
    from alembic import command

    config = migrate._config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    assert migrate.current_revision(engine) == "0001"
    store = Store.open(db_url)
    assert migrate.current_revision(store.engine) == migrate.HEAD
    store.add_job("after-upgrade", job_values())
    store.close()
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(PonyError, match="newer than this pony-scheduler"):
        Store.open(db_url)
    engine.dispose()


def settled_run(job_id: int, now: datetime, minutes: int, state: str) -> dict[str, object]:
    """A manual run of `job_id` settled in `state`, its occurrence `minutes` before `now`
    (a row written straight into an older schema, for the migration tests)."""
    return {
        "job_id": job_id,
        "attempt": 1,
        "trigger": "manual",
        "due_at": now,
        "created_at": now,
        "finished_at": now,
        "occurrence": now - timedelta(minutes=minutes),
        "state": state,
    }


@contextlib.contextmanager
def older_schema(
    db_url: str, job: str, revision: str
) -> Iterator[tuple[Connection, int, datetime]]:
    """A database made by the current code with job `job`: the body writes rows into
    it (connection, the job's id, now), then it is taken down to `revision`."""
    from alembic import command

    store = Store.open(db_url)
    job_id = store.add_job(job, job_values())
    store.close()
    engine = create_engine(db_url)
    config = migrate._config()
    try:
        with engine.begin() as connection:
            yield connection, job_id, utcnow()
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_upgrading_from_the_first_schemas_keeps_every_run(tmp_path: Path) -> None:
    """An SQLite database at 0002 (the first with jobs and runs) upgraded to head by
    Store.open keeps its runs: a batch ALTER rebuilds `jobs`, and with foreign keys on
    its DROP deleted every run (ON DELETE CASCADE) - a review found the whole history
    gone after an upgrade from a pre-keeper release.  (PostgreSQL alters in place.)"""
    db_url = f"sqlite:///{tmp_path / 'old.db'}"
    from sqlalchemy import insert

    from pony_scheduler.store.tables import runs

    with older_schema(db_url, "kept", "0002") as (connection, job_id, now):
        for minutes in (3, 2, 1):
            connection.execute(insert(runs).values(settled_run(job_id, now, minutes, "succeeded")))
    store = Store.open(db_url)
    try:
        assert migrate.current_revision(store.engine) == migrate.HEAD
        assert len(store.list_runs()) == 3
        with store.engine.connect() as connection:  # and foreign keys are on again
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()


def test_0006_pages_from_an_index_and_counts_only_started_runs(db_url: str) -> None:
    """A database at 0005 - its job's last result filled by 0003 from a skipped run, and
    without ix_jobs_removed (0004 gained it late) - upgraded: the last result is the
    latest run that started, and a page of jobs is read in name order from the index."""
    from alembic import command
    from sqlalchemy import insert, update

    from pony_scheduler.store.tables import jobs, runs

    store = Store.open(db_url)
    job_id = store.add_job("j", job_values())
    store.close()
    now = utcnow()
    engine = create_engine(db_url)
    config = migrate._config()
    with engine.begin() as connection:
        connection.execute(insert(runs).values(settled_run(job_id, now, 2, "succeeded")))
        skip = settled_run(job_id, now, 1, "skipped")
        skipped = connection.execute(insert(runs).values(skip)).inserted_primary_key[0]
        filled = {"last_run_id": skipped, "last_state": "skipped", "last_finished_at": now}
        connection.execute(update(jobs).where(jobs.c.id == job_id).values(filled))
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
        connection.execute(text("DROP INDEX IF EXISTS ix_jobs_removed"))
    store = Store.open(db_url)
    assert migrate.current_revision(store.engine) == migrate.HEAD
    (job,) = list(store.iter_jobs())
    assert (job["last_state"], job["last_run_id"]) == ("succeeded", skipped - 1)
    if db_url.startswith("sqlite"):
        page = "SELECT name FROM jobs WHERE removed_at IS NULL AND name > 'a' ORDER BY name"
        with store.engine.connect() as connection:
            plan = " ".join(
                str(r[-1]) for r in connection.execute(text(f"EXPLAIN QUERY PLAN {page}"))
            )
        assert "ix_jobs_removed_name" in plan and "TEMP B-TREE" not in plan, plan
    store.close()
    engine.dispose()


def test_runs_of_a_job_in_a_state_are_read_from_an_index(tmp_path: Path) -> None:
    """`pb runs JOB --state S -n N` walked every run of the job (1,000,000 runs: 0.5 s)
    without ix_runs_job_state_id (0008; review finding): the statement the store runs
    is read from it, with no sort."""
    from sqlalchemy import event

    store = Store.open(f"sqlite:///{tmp_path / 'pony.db'}")
    store.add_job("j", job_values())
    issued: list[tuple[str, object]] = []

    def keep(conn: object, cursor: object, sql: str, params: object, *_: object) -> None:
        if "FROM runs" in sql:
            issued.append((sql, params))

    event.listen(store.engine, "before_cursor_execute", keep)
    store.list_runs("j", 20, "failed")
    event.remove(store.engine, "before_cursor_execute", keep)
    assert issued
    sql, params = issued[0]
    with store.engine.connect() as connection:
        found = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)  # type: ignore[arg-type]
        plan = " ".join(str(r[-1]) for r in found)
    assert "ix_runs_job_state_id (job_id=? AND state=?)" in plan and "TEMP B-TREE" not in plan
    store.close()


def test_only_the_scheduler_migrates_an_older_schema(pb: Pb, home: Path) -> None:
    """Any `pb` command of a newer package upgraded the schema under an older running
    scheduler (on PostgreSQL its CREATE INDEX held the scheduler's writes: runs missed),
    which the older `pb` then refused (review finding).  The CLI creates a new
    database's schema and refuses an older one; the scheduler migrates at its start."""
    from alembic import command

    url = f"sqlite:///{home / 'pony.db'}"
    assert pb("job", "add", "a", "--manual", "--", "true").code == 0  # a new database
    engine = create_engine(url)
    config = migrate._config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
    refused = pb("job", "list")
    assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
    assert "is at schema 0007, this pb expects" in refused.err
    assert "restart the scheduler with this version" in refused.err
    assert migrate.current_revision(engine) == "0007"
    pb("scheduler", "start", check=True)
    assert migrate.current_revision(engine) == migrate.HEAD
    assert "a" in pb("job", "list", check=True).out
    engine.dispose()


def test_migrated_sqlite_tables_keep_autoincrement(tmp_path: Path) -> None:
    """Every table declared with sqlite_autoincrement keeps AUTOINCREMENT through the
    whole migration chain (a batch ALTER rebuilds the table and may drop it): ids of
    removed runs must never be given to new ones."""
    from pony_scheduler.store.tables import metadata

    url = f"sqlite:///{tmp_path / 'pony.db'}"
    Store.open(url).close()
    engine = create_engine(url)
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            if table.dialect_options["sqlite"]["autoincrement"]:
                sql = connection.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": table.name}
                ).scalar()
                assert "AUTOINCREMENT" in str(sql), (table.name, sql)
    engine.dispose()


@pytest.mark.postgres
def test_a_postgresql_database_is_not_taken_for_a_file_in_the_cwd(pb: Pb, pg_url: str) -> None:
    """Its name is not a path: started from a world-writable directory (/tmp), the
    scheduler must not check "/tmp/<database name>" as an SQLite file would be."""
    import subprocess
    import sys

    started = subprocess.run(
        [sys.executable, "-m", "pony_scheduler", "scheduler", "start"],
        cwd="/tmp",
        env={**pb.env, "PONYBUNNY_DB": pg_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    pb.remember()
    assert started.returncode == 0, started.stderr


def test_daemon_refuses_a_newer_database(pb: Pb, home: Path) -> None:
    db = home / "new.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('9999')"))
    engine.dispose()
    result = pb("scheduler", "start", "--db", str(db))
    assert result.code == 1
    assert "newer than this pony-scheduler" in result.err.splitlines()[0]
    listing = pb("job", "list", env={"PONYBUNNY_DB": str(db)})
    assert listing.code == 1 and "newer than this pony-scheduler" in listing.err


def test_schedulers_opening_an_empty_database_together_migrate_once(db_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store.open(db_url), range(4)))
    assert {migrate.current_revision(s.engine) for s in stores} == {migrate.HEAD}
    for store in stores:
        store.close()


def test_prepared_statements_store_what_core_reads(db_url: str) -> None:
    """The loop's hot statements bypass SQLAlchemy's execution layer (store/prepared.py):
    what they write must read back through Core exactly, datetimes and all."""
    store = Store.open(db_url)
    store.scheduler_id = store.register_scheduler()
    store.add_job("j", job_values())
    run_id = store.request_run("j")
    now = utcnow()
    claimed, _ = store.claim(me(store.scheduler_id), request(1, now))
    assert [item.run.id for item in claimed] == [run_id]
    assert claimed[0].run.occurrence.tzinfo is not None and claimed[0].shell is False
    started = [Started(run_id, 4242, 17, "/o.log")]
    store.record_and_claim(me(store.scheduler_id), started, [], None)
    assert store.get_run(run_id)["pid"] == 4242  # type: ignore[index]
    finished_at = now + timedelta(seconds=1.5)
    outcome = Outcome(run_id, Ending.EXITED, finished_at, exit_code=3, tail=b"bye\0\xff")
    settlement = runs.Settlement(
        run_id,
        RunState.FAILED,
        "exit status 3",
        finished_at,
        3,
        next_attempt=runs.NextAttempt(finished_at + timedelta(seconds=5), runs.Trigger.RETRY),
    )
    stale = Finished(claimed[0].run, claimed[0].epoch - 1, settlement, outcome, now)
    ours, _, _ = store.record_and_claim(me(store.scheduler_id), [], [stale], None)
    assert ours == []  # an older epoch's write is refused (fencing)
    assert store.get_run(run_id)["state"] == "running"  # type: ignore[index]
    ours, _, _ = store.record_and_claim(
        me(store.scheduler_id),
        [],
        [Finished(claimed[0].run, claimed[0].epoch, settlement, outcome, now)],
        None,
    )
    assert len(ours) == 1
    run = store.get_run(run_id)
    assert run is not None
    assert (run["state"], run["exit_code"], run["pid"], run["output_path"]) == (
        "failed",
        3,
        4242,
        "/o.log",
    )
    job = store.get_job("j")
    assert job is not None and (job["last_state"], job["last_run_id"]) == ("failed", run_id)
    assert run["started_at"] == now.isoformat()
    assert run["finished_at"] == finished_at.isoformat() and run["duration_s"] == 1.5
    retry = [r for r in store.list_runs() if r["attempt"] == 2]
    assert len(retry) == 1 and retry[0]["state"] == "queued"
    store.close()


def test_prepared_statement_errors_are_sqlalchemy_errors(tmp_path: Path) -> None:
    """The loop tells a database that is unavailable from a bug by SQLAlchemy's
    DBAPIError; the prepared path must raise the same, and leave nothing half-written."""
    url = f"sqlite:///{tmp_path / 'pony.db'}"
    store = Store.open(url)
    store.scheduler_id = store.register_scheduler()
    store.add_job("j", job_values())
    store.request_run("j")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TRIGGER no_claims BEFORE UPDATE OF claimed_by ON runs "
                "BEGIN SELECT RAISE(ABORT, 'claims refused'); END"
            )
        )
    with pytest.raises(DBAPIError, match="claims refused"):
        store.claim(me(store.scheduler_id), request(1))
    assert [r["state"] for r in store.list_runs()] == ["queued"]
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER no_claims"))
    claimed, _ = store.claim(me(store.scheduler_id), request(1))
    assert len(claimed) == 1  # the connection went back to the pool usable
    engine.dispose()
    store.close()


def test_a_claim_without_a_scan_stops_at_its_limit(db_url: str) -> None:
    """Between scans a claim looks no further than what it claims; a scan (the loop asks
    for one every second) still judges the whole window: a run past its start deadline
    behind the claimed one expires then."""
    store = Store.open(db_url)
    store.add_job("a", job_values())
    store.add_job("b", {**job_values(), "start_deadline_s": 1.0, "start_deadline_auto": False})
    first, late = store.request_run("a"), store.request_run("b")
    later = utcnow() + timedelta(minutes=5)
    quick = request(1, later)
    claimed, waiting = store.claim(me("s"), ClaimRequest(quick.now, 1, 60, quick.admit, False))
    assert [c.run.id for c in claimed] == [first] and waiting
    assert store.get_run(late)["state"] == "queued"  # type: ignore[index]
    claimed, _ = store.claim(me("s"), request(1, later))  # scan=True: the default
    assert claimed == [] and store.get_run(late)["state"] == "expired"  # type: ignore[index]


def test_a_jobs_last_result_is_the_run_that_ended_last(db_url: str) -> None:
    """One UPDATE per job and transaction writes the job's last result: the run whose
    final write came last, whatever its id (an older run that ends later is the job's
    latest news); the last success likewise."""
    store = Store.open(db_url)
    store.scheduler_id = store.register_scheduler()
    store.add_job("j", job_values())
    first, second, third = (store.request_run("j") for _ in range(3))
    now = utcnow()
    claimed = {c.run.id: c for c in store.claim(me(store.scheduler_id), request(3, now))[0]}
    assert sorted(claimed) == [first, second, third]

    def finished(run_id: int, state: RunState, after: float) -> Finished:
        at = now + timedelta(seconds=after)
        code = 0 if state is RunState.SUCCEEDED else 1
        outcome = Outcome(run_id, Ending.EXITED, at, exit_code=code)
        settlement = runs.Settlement(run_id, state, None, at, code)
        return Finished(claimed[run_id].run, claimed[run_id].epoch, settlement, outcome, now)

    batch = [finished(second, RunState.SUCCEEDED, 2), finished(third, RunState.FAILED, 3)]
    ours, _, _ = store.record_and_claim(me(store.scheduler_id), [], batch, None)
    assert len(ours) == 2
    job = store.get_job("j")
    assert job is not None
    assert (job["last_run_id"], job["last_state"], job["last_duration_s"]) == (third, "failed", 3)
    assert job["last_success_at"] == (now + timedelta(seconds=2)).isoformat()
    late = [finished(first, RunState.SUCCEEDED, 4)]  # older than the recorded third
    store.record_and_claim(me(store.scheduler_id), [], late, None)
    job = store.get_job("j")
    assert job is not None
    assert (job["last_run_id"], job["last_state"], job["last_duration_s"]) == (third, "failed", 3)
    assert job["last_success_at"] == (now + timedelta(seconds=4)).isoformat()
    store.close()


def test_a_retry_that_starts_last_is_the_last_result_whatever_its_id(db_url: str) -> None:
    """A retry, whose row was made when the attempt before failed (so with a lower id
    than a run queued during its delay), starts and ends after that run: its failure is
    the job's last result (review finding: the newer run's success hid it).  A retry
    that started before the recorded run, its outcome collected late (a hand-over), does
    not hide that run's (review finding)."""
    from sqlalchemy import update

    from pony_scheduler.store.tables import runs as runs_table

    store = Store.open(db_url)
    store.scheduler_id = store.register_scheduler()
    store.add_job("r", job_values())
    retry, manual, late_retry, newest = (store.request_run("r") for _ in range(4))
    now = utcnow()
    with store.engine.begin() as connection:
        for run_id in (retry, late_retry):
            again = {"trigger": "retry", "attempt": 2}
            connection.execute(update(runs_table).where(runs_table.c.id == run_id).values(again))
    claimed = {c.run.id: c for c in store.claim(me(store.scheduler_id), request(4, now))[0]}
    assert sorted(claimed) == [retry, manual, late_retry, newest]

    def finished(run_id: int, state: RunState, start: float, end: float) -> Finished:
        began, at = now + timedelta(seconds=start), now + timedelta(seconds=end)
        code = 0 if state is RunState.SUCCEEDED else 7
        outcome = Outcome(run_id, Ending.EXITED, at, exit_code=code)
        settlement = runs.Settlement(run_id, state, None, at, code, started_at=began)
        return Finished(claimed[run_id].run, claimed[run_id].epoch, settlement, outcome, now)

    def record(*done: Finished) -> tuple[object, object]:
        store.record_and_claim(me(store.scheduler_id), [], list(done), None)
        job = store.get_job("r")
        assert job is not None
        return job["last_run_id"], job["last_state"]

    assert record(finished(manual, RunState.SUCCEEDED, 1, 2)) == (manual, "succeeded")
    assert record(finished(retry, RunState.FAILED, 3, 4)) == (retry, "failed")
    assert record(finished(newest, RunState.SUCCEEDED, 6, 7)) == (newest, "succeeded")
    assert record(finished(late_retry, RunState.FAILED, 5, 6)) == (newest, "succeeded")
    store.close()


def test_jobs_with_alike_plans_get_exactly_the_runs_row_by_row_gave(db_url: str) -> None:
    """Materializing inserts the runs of jobs with alike plans (a herd) with one INSERT ...
    SELECT per run over their ids: the rows must be exactly those the plans' rows
    (store.jobs._rows, what was inserted one by one before) give, each job's in order."""
    from sqlalchemy import select

    from pony_scheduler.store.jobs import _rows
    from pony_scheduler.store.tables import jobs, runs

    store = Store.open(db_url)
    due = utcnow().replace(microsecond=0) - timedelta(minutes=3)
    minute = timedelta(minutes=1)
    herd = occurrences.Plan(to_run=(due + 3 * minute,), next_due=due + 4 * minute)
    catch_up = occurrences.Plan(
        to_run=(due + minute, due + 2 * minute),
        catch_up=(due + minute, due + 2 * minute),
        skipped=(due,),
        uncounted=occurrences.Missed(7, due - 9 * minute, due - 2 * minute),
        next_due=due + 4 * minute,
    )
    full = occurrences.Plan(refused=(due + 3 * minute,), next_due=due + 5 * minute)
    plans = [herd, herd, herd, catch_up, catch_up, full, full, herd]
    for index in range(len(plans)):
        store.add_job(f"j{index}", {**job_values(), "next_due_at": due})
    ids = [job.id for job in sorted(store.due_jobs(utcnow()), key=lambda job: job.id)]
    reason = "missed: the scheduler was up to 3m behind"
    items = [
        Materialize(job_id, due, plan, reason if plan is not full else "other", "backlog full")
        for job_id, plan in zip(ids, plans, strict=True)
    ]
    items[-1] = Materialize(ids[-1], due, herd, "a reason of its own", "backlog full")
    now = utcnow()
    assert sorted(store.materialize(items, now)) == ids
    columns = [c for c in runs.c if c.name not in ("id", "job_id")]
    with store.engine.connect() as connection:
        stored = connection.execute(select(runs.c.job_id, *columns).order_by(runs.c.id)).all()
        next_due = dict(connection.execute(select(jobs.c.id, jobs.c.next_due_at)).all())
    for item in items:
        expected = [
            tuple(row.get(c.name, 0 if c.name == "epoch" else None) for c in columns)
            for row in _rows(item, now)
        ]
        assert [tuple(row[1:]) for row in stored if row[0] == item.job_id] == expected
        assert next_due[item.job_id] == item.plan.next_due
    assert len(stored) == sum(len(list(_rows(item, now))) for item in items)
    assert store.missed_summaries(limit=10)[0]["count"] == 7
    # A repeat that got past the due-time check inserts nothing twice.
    with store.engine.begin() as connection:
        connection.execute(jobs.update().values(next_due_at=due))
    store.materialize(items, now)
    with store.engine.connect() as connection:
        assert len(connection.execute(select(runs.c.id)).all()) == len(stored)
    store.close()


def test_a_claim_without_a_scan_looks_past_runs_held_back(db_url: str) -> None:
    """Between scans a claim first reads only twice its limit of due runs; when those
    are held back (their job's previous run still runs, overlap queue) it reads on, and
    still claims the startable run behind them."""
    store = Store.open(db_url)
    store.add_job("q", {**job_values(), "overlap": "queue"})
    store.add_job("a", job_values())
    held = [store.request_run("q") for _ in range(6)]
    later = utcnow() + timedelta(minutes=5)
    claimed, _ = store.claim(me("s"), request(1, later))
    assert [c.run.id for c in claimed] == [held[0]]
    startable = store.request_run("a")
    quick = request(1, later)
    claimed, waiting = store.claim(me("s"), ClaimRequest(quick.now, 1, 60, quick.admit, False))
    assert [c.run.id for c in claimed] == [startable] and waiting
    assert [store.get_run(run_id)["state"] for run_id in held[1:]] == ["queued"] * 5  # type: ignore[index]
    store.close()


def test_upkeep_finishes_an_unfinished_removal_a_slice_at_a_time(db_url: str) -> None:
    """The scheduler's upkeep deleted every batch of a removed job back to back, holding
    its work loop for the whole job (review: 300,000 runs, 20 s behind); with a budget it
    does at most the batch that crosses it per pass, and finishing takes more passes."""
    from sqlalchemy import insert, update

    from pony_scheduler.store.jobs import REMOVE_BATCH
    from pony_scheduler.store.tables import jobs, runs

    store = Store.open(db_url)
    store.add_job("big", job_values())
    store.add_job("kept", job_values())
    now = utcnow()
    count = 2 * REMOVE_BATCH + 7
    with store.engine.begin() as connection:
        job_id = connection.execute(text("SELECT id FROM jobs WHERE name = 'big'")).scalar()
        assert isinstance(job_id, int)
        connection.execute(
            insert(runs), [settled_run(job_id, now, m, "succeeded") for m in range(count)]
        )
        # what `pb job remove` leaves when it is interrupted after marking the job removed
        connection.execute(
            update(jobs).where(jobs.c.id == job_id).values(name=".removed-1", removed_at=now)
        )
    passes = []
    while store.removals_pending():
        passes.append(store.purge_removed(budget_s=0).deleted)
    assert passes == [REMOVE_BATCH, REMOVE_BATCH, 7, 0]
    assert [job["name"] for job in store.iter_jobs()] == ["kept"]
    store.close()


def test_a_new_jitter_moves_the_next_run_within_its_own_slot(db_url: str) -> None:
    """`pb job edit --jitter` moves the next run inside the slot it was in: given after
    a slot ran, that slot does not run again; removed before a jittered run's time, its
    slot is not skipped (review finding: both happened, as the next run was taken from
    the edit's time)."""
    from pony_scheduler.jobs import JobOptions, changed_job, new_job
    from pony_scheduler.scheduler.schedule import jitter_offset

    store = Store.open(db_url)
    minute = datetime(2026, 12, 2, 6, 26, tzinfo=UTC)
    cron = JobOptions(cron="* * * * *", tz="UTC", command=["true"])
    store.add_job("d2", new_job("d2", cron, minute + timedelta(seconds=0.5)))  # 06:26 ran
    offset = jitter_offset("d2", 59.0)
    assert offset > 3  # the case: an offset past the edit's time in the slot that ran
    row = store.job_row("d2")
    assert row is not None
    edited = changed_job(JobOptions(jitter="59s"), minute + timedelta(seconds=3), row)
    assert edited["next_due_at"] == minute + timedelta(minutes=1, seconds=offset)
    store.update_job("d2", edited)
    row = store.job_row("d2")
    assert row is not None
    later = minute + timedelta(minutes=1, seconds=offset / 2)  # before its jittered time
    edited = changed_job(JobOptions(jitter="0"), later, row)
    assert edited["next_due_at"] == minute + timedelta(minutes=1)  # due now: not skipped
    # The same schedule restated with the jitter: the same (review finding: it re-ran).
    again = JobOptions(cron="* * * * *", tz="UTC", jitter="59s")
    store.add_job("d3", new_job("d2", cron, minute + timedelta(seconds=0.5)))
    row = store.job_row("d3")
    assert row is not None
    row = {**row, "name": "d2"}  # d2's offset, which is past the edit's time
    edited = changed_job(again, minute + timedelta(seconds=3), row)
    assert edited["next_due_at"] == minute + timedelta(minutes=1, seconds=offset)
    store.close()


def test_0009_gives_a_last_result_its_duration(db_url: str) -> None:
    """A database at 0008 whose job's last result has no duration (0003 filled it
    without one, 0006 cleared it; review finding) upgraded: the duration of that run,
    from its start to its end, as `pb runs` shows it."""
    from sqlalchemy import insert, update

    from pony_scheduler.store.tables import jobs, runs

    with older_schema(db_url, "j", "0008") as (connection, job_id, now):
        row = {
            **settled_run(job_id, now, 1, "succeeded"),
            "started_at": now - timedelta(seconds=1.5),
        }
        run_id = connection.execute(insert(runs).values(row)).inserted_primary_key[0]
        last = {"last_run_id": run_id, "last_state": "succeeded", "last_finished_at": now}
        connection.execute(
            update(jobs).where(jobs.c.id == job_id).values({**last, "last_duration_s": None})
        )
    store = Store.open(db_url)
    assert migrate.current_revision(store.engine) == migrate.HEAD
    job = store.get_job("j")
    assert job is not None and job["last_duration_s"] == 1.5, job
    store.close()
