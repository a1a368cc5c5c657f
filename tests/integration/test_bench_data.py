"""bench/ writes its big data sets straight into the schema (INSERT … SELECT): check that
what it writes is what the product reads, so that a schema change cannot quietly turn the
benchmarks into measurements of broken rows.  No timing here."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import Pb

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def common():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        import common as bench_common

        yield bench_common
    finally:
        sys.path.remove(str(BENCH))


def test_cloned_jobs_and_runs_read_back(common, pb: Pb) -> None:  # type: ignore[no-untyped-def]
    home = pb.home
    home.mkdir(parents=True, exist_ok=True)
    now = common.utcnow()
    store = common.open_store(common.sqlite_url(home))
    try:
        store.add_job(
            "scale-000000", common.job_values("scale-000000", ["true"], every="30d", anchor=now)
        )
    finally:
        store.close()
    last = common.sqlite_time(now - timedelta(minutes=1))
    first, last_id = common.clone_jobs(
        home,
        "scale-000000",
        49,
        "scale",
        last_state="succeeded",
        last_finished_at=last,
        no_such_column=1,
    )
    assert last_id - first == 48
    common.clone_runs(home, 500, 1, 50, now - timedelta(minutes=1))

    jobs = json.loads(pb("job", "list", "--json", check=True).out)
    assert len(jobs) == 50
    states = [job["last_state"] for job in jobs]
    assert states.count("succeeded") == 49 and states.count(None) == 1  # the copies, the original
    assert all(job["enabled"] for job in jobs)

    runs = json.loads(pb("runs", "--state", "failed", "-n", "100", "--json", check=True).out)
    assert len(runs) == 50  # every 10th of 500
    assert all(run["state"] == "failed" and run["exit_code"] == 1 for run in runs)
    ids = [run["id"] for run in runs]
    assert ids == sorted(ids, reverse=True)  # newest first
    started = [run["started_at"] for run in runs]
    assert started == sorted(started, reverse=True)  # ids grow with time
    assert "succeeded" in pb("runs", "-n", "5", check=True).out


def test_herd_jobs_are_all_due_at_the_minute(common, pb: Pb) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        import bench_herd
    finally:
        sys.path.remove(str(BENCH))
    home = pb.home
    home.mkdir(parents=True, exist_ok=True)
    bench_herd.prepare(home, 20)
    minute = bench_herd.next_minute(common.utcnow() + timedelta(hours=1))
    bench_herd.aim(home, minute)
    jobs = json.loads(pb("job", "list", "--json", check=True).out)
    assert len(jobs) == 20
    assert {job["next_run_at"] for job in jobs} == {minute.isoformat()}
