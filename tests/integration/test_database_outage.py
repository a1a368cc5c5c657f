"""A whole-database outage longer than the lease loses no live run.

Every lease expires while nobody can reach the database to renew it.  When it is back,
the first scheduler to reconnect must not declare the runs of the others lost: it judges
leases only after a whole lease of reaching the database (Loop.may_judge_leases), time
in which their holders renew them.  The outage is real: the test's database refuses
connections (ALLOW_CONNECTIONS false) and its sessions are ended, until its clock shows
that the run's lease ran out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, Pb, wait_for
from tests.integration.hosts_helpers import (
    need_namespaces,
    text,
    two_homes,
    wait_runs,
)

pytestmark = pytest.mark.postgres


def lease_until(pg_url: str, run_id: int) -> datetime:
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        row = conn.execute("SELECT lease_until FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return row[0]


@contextmanager
def altered(database: str, change: str, undo: str) -> Iterator[psycopg.Connection]:
    """`ALTER DATABASE database change`, its sessions ended so that new ones meet it,
    until the block ends (then `undo`); yields an administrator's connection to another
    database."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" {change}')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            yield admin
        finally:
            admin.execute(f'ALTER DATABASE "{database}" {undo}')


def outage(database: str) -> AbstractContextManager[psycopg.Connection]:
    """The database refuses every connection and its sessions end, until the block ends."""
    return altered(database, "ALLOW_CONNECTIONS false", "ALLOW_CONNECTIONS true")


@pytest.mark.soak  # waits out leases: a long fault run (README, Soak tests)
def test_an_outage_longer_than_the_lease_loses_no_live_run(
    pb: Pb, tmp_path: Path, pg_url: str
) -> None:
    need_namespaces()
    second = two_homes(pb, tmp_path, pg_url, other_host=True)
    release = tmp_path / "release"
    try:
        pb("scheduler", "start", check=True)
        second("scheduler", "start", check=True)
        pb(
            "job",
            "add",
            "long",
            "--manual",
            "--retries",
            "2",
            "--shell",
            "--",
            f"while [ ! -e {release} ]; do sleep 0.2; done",
            check=True,
        )
        pb("job", "run", "long", check=True)
        run = wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running" and rs[0]["pid"])[0]
        database = pg_url.rsplit("/", 1)[1]
        expires = lease_until(pg_url, run["id"])
        with outage(database) as admin:
            # Until the database's own clock is past the lease (a renewal between the
            # read and the outage moves it by a twelfth of the lease at most).
            def lease_ran_out() -> bool:
                row = admin.execute("SELECT now() > %s + interval '5 s'", (expires,))
                return bool(row.fetchone()[0])  # type: ignore[index]

            assert wait_for(lease_ran_out, 120, interval=0.5)
            logs = (pb.home / "scheduler.log", second.home / "scheduler.log")
            assert wait_for(lambda: all("Database unavailable" in text(p) for p in logs), 60)
        assert wait_for(lambda: all("Database available again" in text(p) for p in logs), 120)
        release.touch()
        runs = wait_runs(pb, lambda rs: rs and rs[0]["state"] != "running", timeout=120)
        assert [(r["id"], r["state"]) for r in runs] == [(run["id"], "succeeded")], runs
        for path in logs:
            assert "was lost" not in text(path)
            assert text(path).count("Database unavailable") == 1, text(path)
    finally:
        second.cleanup()


def test_a_restart_during_an_outage_leaves_the_running_scheduler_alone(
    pb: Pb, pg_url: str, tmp_path: Path
) -> None:
    """restart and start --force stopped the running scheduler, then the replacement could
    not open the database and the home had no scheduler at all (review finding).  They now
    ask the database first and, when it does not answer, refuse with one line and leave
    the running one, which rides out the outage and records its run once."""
    pb.env["PONYBUNNY_DB"] = pg_url
    go = tmp_path / "go"
    pb("scheduler", "start", check=True)
    pid = pb.pid()
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; echo end"
    pb("job", "add", "w", "--manual", "--shell", "--", script, check=True)
    pb("job", "run", "w", check=True)
    wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running")
    with outage(pg_url.rsplit("/", 1)[1]):
        for args in (("restart",), ("start", "--force")):
            refused = pb("scheduler", *args)
            assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
            assert "cannot use database" in refused.err
            assert "the running scheduler was left alone" in refused.err
            assert pb.pid() == pid
        go.touch()
    done = wait_runs(pb, lambda rs: rs and rs[0]["state"] == "succeeded")
    assert [run["state"] for run in done] == ["succeeded"]
    assert pb("scheduler", "restart").code == 0
    assert pb.pid() != pid


def test_a_restart_on_a_read_only_database_leaves_the_running_scheduler_alone(
    pb: Pb, pg_url: str
) -> None:
    """A database that takes connections but no writes (a hot standby after a failover):
    the replacement failed at its first write with the driver's traceback and the home
    had no scheduler (review finding); restart now refuses, and a start says why."""
    database = pg_url.rsplit("/", 1)[1]
    pb.env["PONYBUNNY_DB"] = pg_url
    pb("scheduler", "start", check=True)
    pid = pb.pid()
    read_only = ("SET default_transaction_read_only = on", "RESET default_transaction_read_only")
    with altered(database, *read_only):
        refused = pb("scheduler", "restart")
        assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
        assert "is read-only" in refused.err and "left alone" in refused.err
        assert pb.pid() == pid
    assert pb("scheduler", "restart").code == 0
    assert pb.pid() != pid


def test_a_restart_onto_a_newer_schema_leaves_the_running_scheduler_alone(
    pb: Pb, home: Path
) -> None:
    """A newer package migrated the database: restart stopped the running scheduler,
    then its replacement refused the schema, and nothing ran (review finding)."""
    import sqlite3

    pb("scheduler", "start", check=True)
    pid = pb.pid()
    with sqlite3.connect(home / "pony.db") as connection:
        (head,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    for args in (("restart",), ("start", "--force")):
        refused = pb("scheduler", *args)
        assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
        assert "revision 9999, newer than this pony-scheduler" in refused.err, refused.all
        assert "left alone" in refused.err and pb.pid() == pid
        assert "when the database is back" not in refused.err  # not an outage
    with sqlite3.connect(home / "pony.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (head,))


@pytest.mark.soak  # a stop that waits out the database: a fault run (README, Soak tests)
def test_a_stop_during_an_outage_leaves_the_outcomes_to_the_keeper(
    pb: Pb, pg_url: str, tmp_path: Path
) -> None:
    """`pb scheduler stop` while the database is down drained the runs, could not record
    them, and then let the keeper exit with their outcomes: nobody renewed their leases,
    other hosts declared them lost and they never ran again (review finding).  The keeper
    now stays while it holds outcomes not recorded, renews their runs' leases once the
    database is back, and the next start records the drained run as interrupted and
    runs it again."""
    pb.env.update(PONYBUNNY_DB=pg_url, PONYBUNNY_LEASE="10", PONYBUNNY_SHUTDOWN_GRACE="1")
    ledger = tmp_path / "ledger"
    pb("scheduler", "start", check=True)
    script = f'echo "$PONYBUNNY_RUN_ID" >> {ledger}; sleep 300'
    pb("job", "add", "long", "--manual", "--shell", "--", script, check=True)
    pb("job", "run", "long", check=True)
    run = wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running" and rs[0]["pid"])[0]
    with outage(pg_url.rsplit("/", 1)[1]) as admin:
        stopped = pb("scheduler", "stop", "--timeout", "120")
        assert stopped.code == 0, stopped.all
        assert "⚠ The run keeper (PID" in stopped.err and "stays" in stopped.err, stopped.all
        log = text(pb.home / "scheduler.log")
        assert "keeps their outcomes, and renews their leases" in log, log
        back = admin.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    # Back: the keeper, with no scheduler, renews the drained run's lease.
    assert wait_for(lambda: lease_until(pg_url, run["id"]) > back, 60, interval=0.5)
    pb("scheduler", "start", check=True)
    runs = wait_runs(pb, lambda rs: len(rs) == 2 and rs[1]["state"] == "running")
    assert (runs[0]["id"], runs[0]["state"]) == (run["id"], "interrupted"), runs
    assert wait_for(lambda: ledger.read_text().split() == [str(r["id"]) for r in runs], 30)
    pb("scheduler", "stop", check=True)
