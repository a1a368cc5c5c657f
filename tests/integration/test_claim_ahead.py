"""Runs claimed ahead of a free worker (loop.AHEAD): never left `running` unstarted."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pony_scheduler.store import Store
from tests.conftest import Pb, wait_for


def all_runs(pb: Pb) -> list[dict[str, Any]]:
    result = pb("runs", "--json", "-n", "10000")
    assert result.code == 0, result.all
    return json.loads(result.out)  # type: ignore[no-any-return]


def queue_runs(home: Path, job: str, count: int) -> list[int]:
    store = Store.open(f"sqlite:///{home / 'pony.db'}", upgrade=False)
    try:
        return [store.request_run(job) for _ in range(count)]
    finally:
        store.close()


@pytest.mark.soak  # long (15-25 s): in the soak target, to keep the default suite short
def test_burst_stopped_midway_leaves_nothing_claimed_and_unstarted(
    pb: Pb, home: Path, tmp_path: Path
) -> None:
    markers = tmp_path / "executed"
    pb("scheduler", "start", "--workers", "1", check=True)
    # Each run takes a little while, so that the stop below lands midway even when the
    # `pb scheduler stop` process is slow to start on a loaded machine.
    pb(
        "job",
        "add",
        "burst",
        "--manual",
        "--overlap",
        "allow",
        "--shell",
        "--",
        f"echo $PONYBUNNY_RUN_ID >> {markers}; sleep 0.05",
        check=True,
    )
    ids = queue_runs(home, "burst", 300)
    assert wait_for(lambda: markers.exists() and len(markers.read_text().split()) >= 30, 30)
    pb("scheduler", "stop", check=True)
    after_stop = all_runs(pb)
    states = Counter(r["state"] for r in after_stop)
    assert "running" not in states, states
    assert set(states) <= {"succeeded", "queued", "interrupted"}, states
    assert states["queued"] > 0  # stopped midway: some never started ...
    # ... and those are unclaimed again, not lost, not interrupted
    assert all(r["claimed_by"] is None for r in after_stop if r["state"] == "queued")
    pb("scheduler", "start", "--workers", "1", check=True)
    assert wait_for(lambda: all(r["state"] not in ("queued", "running") for r in all_runs(pb)), 60)
    pb("scheduler", "stop", check=True)
    executed = markers.read_text().split()
    assert len(executed) == len(set(executed)), "a run executed twice"
    final = all_runs(pb)
    succeeded = Counter(r["occurrence"] for r in final if r["state"] == "succeeded")
    assert len(succeeded) == len(ids) and set(succeeded.values()) == {1}


def test_run_claimed_ahead_behind_a_long_run_goes_back_to_the_queue(pb: Pb, home: Path) -> None:
    pb("scheduler", "start", "--workers", "1", check=True)
    pb("job", "add", "quick", "--manual", "--overlap", "allow", "--", "true", check=True)
    pb("job", "add", "long", "--manual", "--", "sleep", "8", check=True)
    # Quick runs turn over fast, so the loop claims ahead; the long run then holds the
    # only worker while the run claimed after it waits.
    queue_runs(home, "quick", 40)
    queue_runs(home, "long", 1)
    queue_runs(home, "quick", 5)

    def long_running() -> bool:
        return any(r["job"] == "long" and r["state"] == "running" for r in all_runs(pb))

    assert wait_for(long_running, 30)
    running: list[dict[str, Any]] = []

    def only_long_running() -> bool:
        nonlocal running
        running = [r for r in all_runs(pb) if r["state"] == "running"]
        return [r["job"] for r in running] == ["long"] and running[0]["pid"] is not None

    # The run claimed ahead goes back to the queue within AHEAD_WAIT of no worker taking
    # it; on a loaded machine that can take longer, so wait for it rather than sleep.
    assert wait_for(only_long_running, 30), running
    assert wait_for(lambda: all(r["state"] == "succeeded" for r in all_runs(pb)), 90)
    assert len(all_runs(pb)) == 46
