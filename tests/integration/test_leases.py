"""Leases on PostgreSQL while a home's scheduler is gone but its run keeper lives.

Two homes share one database, as two hosts would (the second one rescues what the first
stops renewing).  The run keeper of the first home renews its runs' leases while no
scheduler is connected to it (keeper/renewal.py), so the second never rescues a run that
is alive; and a keeper frozen past the lease stops its copy of a run the second took
over, and nothing is recorded over the rescuer.  Every wait is for something a user sees
(a run's state, a line in a log, a file the job writes); none depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pb, alive, wait_for
from tests.integration.hosts_helpers import (
    FAKETIME,
    need_namespaces,
    runs_of,
    text,
    two_homes,
    verified_pid,
    wait_runs,
)

pytestmark = pytest.mark.postgres


def start_a_long_run(pb: Pb, marker: Path) -> list[dict[str, Any]]:
    """Start `pb`'s scheduler and a run of 25 s, longer than two leases (without renewals
    another home would rescue it), that appends its run id to `marker` at its end; the
    runs once it is running with a pid."""
    pb("scheduler", "start", check=True)
    pb(
        "job",
        "add",
        "long",
        "--manual",
        "--retries",
        "1",
        "--retry-delay",
        "0.1",
        "--shell",
        "--",
        f"sleep 25; echo $PONYBUNNY_RUN_ID >> {marker}",
        check=True,
    )
    pb("job", "run", "long", check=True)
    return wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running" and rs[0]["pid"])


@pytest.mark.soak  # waits out leases: a long fault run (README, Soak tests)
def test_a_live_keeper_renews_the_leases_of_a_dead_schedulers_runs(
    pb: Pb, tmp_path: Path, pg_url: str
) -> None:
    """kill -9 of the scheduler: its run lives on under the keeper, which renews the
    lease, so the other home never rescues it; the next scheduler records it once."""
    second = two_homes(pb, tmp_path, pg_url)
    marker = tmp_path / "ended"
    try:
        first = start_a_long_run(pb, marker)
        os.kill(verified_pid(pb.home, "scheduler"), signal.SIGKILL)
        second("scheduler", "start", check=True)
        keeper_log = pb.home / "keeper.log"
        assert wait_for(lambda: "renewing the leases of 1 run(s)" in text(keeper_log), 30)
        assert wait_for(marker.exists, 90), text(keeper_log)
        # The job ended long after its lease would have run out; it is still running in
        # the database (its outcome waits in the keeper), and nobody rescued it.
        assert [(r["id"], r["state"]) for r in runs_of(pb)] == [(first[0]["id"], "running")]
        pb("scheduler", "start", check=True)
        runs = wait_runs(pb, lambda rs: rs and rs[0]["state"] == "succeeded")
        assert [(r["id"], r["attempt"], r["state"]) for r in runs] == [
            (first[0]["id"], 1, "succeeded")
        ]
        assert marker.read_text().split() == [str(first[0]["id"])]
        assert "was lost" not in text(second.home / "scheduler.log")
    finally:
        second.cleanup()


@pytest.mark.soak  # waits out leases: a long fault run (README, Soak tests)
def test_the_keeper_of_a_stopped_scheduler_keeps_its_runs_leases(
    pb: Pb, tmp_path: Path, pg_url: str
) -> None:
    """SIGSTOP to the scheduler (not its keeper): it renews nothing, but it is still
    connected.  The keeper, no longer told "renewed", renews the leases itself, so the
    other home never rescues the run; on SIGCONT the scheduler records it once."""
    second = two_homes(pb, tmp_path, pg_url)
    marker = tmp_path / "ended"
    scheduler = None
    try:
        first = start_a_long_run(pb, marker)
        scheduler = verified_pid(pb.home, "scheduler")
        os.kill(scheduler, signal.SIGSTOP)
        # Only now the other home: the run is surely the first home's.
        second("scheduler", "start", check=True)
        keeper_log = pb.home / "keeper.log"
        assert wait_for(lambda: "has not renewed its leases for" in text(keeper_log), 60), text(
            keeper_log
        )
        assert wait_for(marker.exists, 90), text(keeper_log)
        # Ended long after its lease would have run out: still running in the database
        # (its outcome waits for the stopped scheduler), and nobody rescued it.
        assert [(r["id"], r["state"]) for r in runs_of(pb)] == [(first[0]["id"], "running")]
        os.kill(scheduler, signal.SIGCONT)
        scheduler = None
        runs = wait_runs(pb, lambda rs: rs and rs[0]["state"] == "succeeded")
        assert [(r["id"], r["attempt"], r["state"]) for r in runs] == [
            (first[0]["id"], 1, "succeeded")
        ]
        assert marker.read_text().split() == [str(first[0]["id"])]
        assert "was lost" not in text(second.home / "scheduler.log")
        assert wait_for(lambda: "renews its leases again" in text(keeper_log), 60)
    finally:
        if scheduler is not None:
            os.kill(scheduler, signal.SIGCONT)
        second.cleanup()


@pytest.mark.soak  # waits out leases: a long fault run (README, Soak tests)
def test_a_keeper_frozen_past_the_lease_stops_its_copy_and_records_nothing(
    pb: Pb, tmp_path: Path, pg_url: str
) -> None:
    """The keeper (no scheduler connected) is frozen past the lease: the other home
    declares the run lost and retries it; on thaw the keeper's renewal finds the run
    taken over and kills its copy at once; the next scheduler records nothing over it."""
    need_namespaces()
    second = two_homes(pb, tmp_path, pg_url, other_host=True)
    keeper = None
    try:
        pb("scheduler", "start", check=True)
        pb(
            "job",
            "add",
            "once",
            "--manual",
            "--retries",
            "1",
            "--retry-delay",
            "0.1",
            "--shell",
            "--",
            'if [ "$PONYBUNNY_ATTEMPT" = 1 ]; then sleep 300; fi',
            check=True,
        )
        pb("job", "run", "once", check=True)
        first = wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running" and rs[0]["pid"])[0]
        os.kill(verified_pid(pb.home, "scheduler"), signal.SIGKILL)
        keeper_log = pb.home / "keeper.log"
        assert wait_for(lambda: "renewing the leases of 1 run(s)" in text(keeper_log), 30)
        keeper = verified_pid(pb.home, "keeper")
        os.kill(keeper, signal.SIGSTOP)
        second("scheduler", "start", check=True)
        runs = wait_runs(
            pb,
            lambda rs: len(rs) == 2 and rs[0]["state"] == "lost" and rs[1]["state"] == "succeeded",
        )
        assert runs[0]["reason"] == "lost: its scheduler stopped renewing the lease"
        assert alive(first["pid"])  # the frozen host's copy: still there
        os.kill(keeper, signal.SIGCONT)
        keeper = None
        assert wait_for(
            lambda: (
                f"Run {first['id']} is no longer this host's (the database "
                "has it lost" in text(keeper_log)
            ),
            60,
        ), text(keeper_log)
        assert wait_for(lambda: not alive(first["pid"]), 30)
        pb("scheduler", "start", check=True)
        log = pb.home / "scheduler.log"
        assert wait_for(
            lambda: (
                f"Run {first['id']}: its outcome here (killed, " in text(log)
                and "came after the run stopped running here; it is recorded lost "
                "(lost: its scheduler stopped renewing the lease), and that stays"
                in text(log)
            ),
            60,
        ), text(log)
        after = runs_of(pb)
        assert [(r["attempt"], r["state"]) for r in after] == [(1, "lost"), (2, "succeeded")]
        assert after[0]["reason"] == runs[0]["reason"]  # nothing recorded over the rescuer
    finally:
        if keeper is not None:
            os.kill(keeper, signal.SIGCONT)
        second.cleanup()


def test_status_says_how_far_this_hosts_clock_is_from_the_databases(pb: Pb, pg_url: str) -> None:
    """The scheduler measures the offset at each heartbeat and keeps it in
    scheduler.json; `pb scheduler status` shows it without touching the database."""
    if not FAKETIME.exists():
        pytest.skip("libfaketime is not installed")
    pb.env.update(
        PONYBUNNY_DB=pg_url,
        LD_PRELOAD=str(FAKETIME),
        FAKETIME="+30s",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    pb("scheduler", "start", check=True)
    shown = pb("scheduler", "status")
    assert shown.code == 0, shown.all
    assert (
        "Clock:     30s ahead of the database's: leases and due times follow the "
        "database's clock; check this host's time sync" in shown.out
    ), shown.out
    facts = json.loads(pb("scheduler", "status", "--json").out)
    assert -32 < facts["clockOffsetSeconds"] < -28
    assert facts["metadata"]["clockOffsetS"] == facts["clockOffsetSeconds"]
    # On SQLite there is no database clock to compare with: no such line.
    local = Pb(pb.home.parent / "local")
    local.home.mkdir(mode=0o700)
    try:
        local("scheduler", "start", check=True)
        assert "Clock:" not in local("scheduler", "status").out
        assert json.loads(local("scheduler", "status", "--json").out)["clockOffsetSeconds"] is None
    finally:
        local.cleanup()


def test_the_keeper_refuses_a_launch_that_comes_after_its_start_by(home: Path) -> None:
    """A launch that reached the keeper too late (the host froze with it in the socket)
    is refused: its claim's lease may have run out, and another host may run it."""
    import select
    import time

    from pony_scheduler.keeper.client import KeeperClient
    from pony_scheduler.keeper.protocol import Launch, Outcome, Refused

    client = KeeperClient.connect(home, "test", idle_exit_s=1)
    try:
        late = Launch(
            1,
            ("true",),
            str(home / "runs" / "j" / "1.log"),
            env={"PATH": os.defpath},
            token="1",
            start_by=time.monotonic() - 1,
        )
        in_time = Launch(
            2,
            ("true",),
            str(home / "runs" / "j" / "2.log"),
            env={"PATH": os.defpath},
            token="1",
            start_by=time.monotonic() + 60,
        )
        client.launch(late)
        client.launch(in_time)
        events: list[object] = []

        def answered() -> bool:
            select.select([client], [], [], 0.2)
            events.extend(client.read_events())
            return any(isinstance(e, Outcome) and e.run_id == 2 for e in events)

        assert wait_for(answered, 60), events
        refused = [e for e in events if isinstance(e, Refused)]
        assert [(e.run_id, e.reason, e.requeue) for e in refused] == [
            (
                1,
                "it came too late: its lease may have run out meanwhile (was this host "
                "frozen?), and another host may run it",
                True,
            )
        ]
    finally:
        client.release_exit()
        client.close()


@pytest.mark.soak  # waits out leases: a long fault run (README, Soak tests)
def test_a_launch_refused_as_late_goes_back_to_the_queue_without_spending_an_attempt(
    pb: Pb, tmp_path: Path
) -> None:
    """The keeper is frozen while a launch waits in its socket, past a third of the
    lease: it refuses the launch on thaw.  The scheduler still holds the run's lease, so
    the run goes back to the queue and runs, attempt 1, once: not `failed`, no retry."""
    pb.env.update(PONYBUNNY_LEASE="10")
    marker = tmp_path / "ran"
    pb("scheduler", "start", check=True)
    pb("job", "add", "once", "--manual", "--shell", "--", f"echo x >> {marker}", check=True)
    keeper = verified_pid(pb.home, "keeper")
    os.kill(keeper, signal.SIGSTOP)
    try:
        pb("job", "run", "once", check=True)
        wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running")
        time.sleep(10)  # a lower bound, not a race: the launch must be older than 10/3 s
    finally:
        os.kill(keeper, signal.SIGCONT)
    runs = wait_runs(pb, lambda rs: rs and rs[0]["state"] not in ("queued", "running"))
    assert [(r["attempt"], r["state"]) for r in runs] == [(1, "succeeded")], runs
    assert marker.read_text() == "x\n"
    log = text(pb.home / "scheduler.log")
    assert f"Run {runs[0]['id']}: the keeper refused it (it came too late" in log, log
    assert "goes back to the queue" in log


def test_a_frozen_keeper_gets_no_more_launches_until_it_answers(pb: Pb, tmp_path: Path) -> None:
    """A keeper that does not answer a launch for 5 s (frozen): the scheduler claims
    nothing more, so that due runs stay queued for other hosts instead of waiting here
    and expiring (review finding), and says so; once the keeper answers, every run runs
    once."""
    pb.env.update(PONYBUNNY_LEASE="10")
    marker = tmp_path / "ran"
    pb("scheduler", "start", check=True)
    script = f"echo $PONYBUNNY_RUN_ID >> {marker}"
    pb("job", "add", "j", "--manual", "--overlap", "allow", "--shell", "--", script, check=True)
    keeper = verified_pid(pb.home, "keeper")
    log = pb.home / "scheduler.log"
    os.kill(keeper, signal.SIGSTOP)
    try:
        pb("job", "run", "j", check=True)
        wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running")
        time.sleep(6)  # a lower bound, not a race: the launch must be older than 5 s
        pb("job", "run", "j", check=True)  # wakes the loop, which finds it unanswered
        assert wait_for(lambda: "has not answered a launch for 5s" in text(log), 60), text(log)
        states = [r["state"] for r in json.loads(pb("runs", "--json").out)]
        assert states == ["queued", "running"], states
    finally:
        os.kill(keeper, signal.SIGCONT)
    runs = wait_runs(
        pb, lambda rs: len(rs) == 2 and all(r["state"] not in ("queued", "running") for r in rs)
    )
    assert [(r["attempt"], r["state"]) for r in runs] == [(1, "succeeded")] * 2, runs
    assert sorted(marker.read_text().split()) == sorted(str(r["id"]) for r in runs)
    assert "The run keeper answers again" in text(log)


def test_due_times_from_pb_follow_the_databases_clock(pb: Pb, pg_url: str) -> None:
    """`pb job add --at +10m` on a host whose clock is an hour ahead: the run is due ten
    minutes from now by the database's clock (the one every scheduler judges by), not an
    hour and ten minutes; `pb job next` and `pb job resume` count from it too."""
    if not FAKETIME.exists():
        pytest.skip("libfaketime is not installed")
    pb.env.update(PONYBUNNY_DB=pg_url)
    pb("scheduler", "start", check=True)  # creates the schema, with the host's own clock
    ahead = dict(LD_PRELOAD=str(FAKETIME), FAKETIME="+3600s", FAKETIME_DONT_FAKE_MONOTONIC="1")
    before = datetime.now(UTC)
    pb("job", "add", "once", "--at", "+10m", "--", "true", env=ahead, check=True)
    pb("job", "add", "hourly", "--every", "1h", "--", "true", check=True)
    pb("job", "pause", "hourly", check=True)
    pb("job", "resume", "hourly", env=ahead, check=True)
    after = datetime.now(UTC)
    due = {
        job["name"]: datetime.fromisoformat(job["next_run_at"])
        for job in json.loads(pb("job", "list", "--json").out)
    }
    assert before + timedelta(minutes=9) < due["once"] < after + timedelta(minutes=11), due
    assert before + timedelta(minutes=59) < due["hourly"] < after + timedelta(minutes=61), due
    shown = json.loads(pb("job", "next", "hourly", "-n", "1", "--json", env=ahead).out)
    first = datetime.fromisoformat(shown["runs"][0]["utc"])
    assert first < after + timedelta(minutes=61), shown


def test_a_draining_scheduler_is_not_taken_for_a_hung_one(pb: Pb, tmp_path: Path) -> None:
    """`pb scheduler stop` waits for a run longer than a third of the lease (when the
    keeper starts renewing for a silent scheduler): the draining scheduler still renews
    and tells its keeper so, which logs no "has not renewed" warning (review finding)."""
    go = tmp_path / "go"
    home = pb.home
    (home / "config.toml").write_text("lease = 30\nshutdown_grace = 300\n")
    pb("scheduler", "start", check=True)
    pb("job", "add", "slow", "--manual", "--shell", "--", f"until [ -e {go} ]; do sleep 0.1; done")
    pb("job", "run", "slow", check=True)
    wait_runs(pb, lambda rs: rs and rs[0]["state"] == "running" and rs[0]["pid"])
    stopping = pb.popen("scheduler", "stop")
    log = home / "scheduler.log"
    assert wait_for(lambda: "Waiting up to 300s for 1 running job(s)" in text(log), 60)
    time.sleep(15)  # the drain lasts 1.5x the 10 s after which the keeper would step in
    go.touch()
    assert stopping.wait(120) == 0
    assert "has not renewed its leases" not in text(home / "keeper.log")
    assert json.loads(pb("runs", "--json").out)[0]["state"] == "succeeded"
