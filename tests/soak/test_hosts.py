"""Three hosts on one PostgreSQL database (`pytest -m soak`, about three minutes).

Each host is simulated on this machine (tests/integration/hosts_helpers.py): its own
hostname, machine id and boot id (unshare --mount --uts and bind mounts), its own
PONYBUNNY_HOME, its own scheduler and run keeper.  The lease is shortened to 20 s for
the test (PONYBUNNY_LEASE; the default is 60 s), so that the faults below outlast it.
Several jobs run every few seconds for 1-5 s each, appending a `start` and an `end` line
per execution to one ledger file shared by the three hosts.  Then, at once:

- host A has its scheduler kill -9'd with runs in flight; its run keeper lives on and
  renews their leases, the runs finish, and A's next scheduler, started well over a
  lease later, records them, once: nobody rescued them;
- host B is frozen whole for at least 90 s (the cgroup freezer: scheduler, keeper and
  jobs); its leases run out and another host retries its runs; on thaw B stops its own
  copies at once and records nothing over the rescuer;
- host C runs 65 s ahead under libfaketime (the wall clock only) and steals nothing:
  leases are judged by the database's clock.

What is counted, from the ledger and the database after every host has stopped:

- occurrences executing twice at the same time: two copies of one (job, occurrence)
  whose executions overlap.  A copy executes from its `start` line to its `end` line.  A
  copy stopped by fencing has no `end` line: it is counted as executing until the end of
  the test (we cannot see when the kill reached it, so we assume the worst) - except while
  its host was frozen, when it demonstrably executed nothing.  Such a copy therefore
  overlaps any copy of its occurrence that executes after B's thaw;
- finished runs recorded `lost`: a run whose copy wrote its `end` line.  The only ones
  allowed are B's runs that were still `running` in the database when B froze (the
  snapshot F): B froze before it could record them, which no other host can tell from
  a dead host, so they are lost after the lease like their siblings (and retried);
- runs left `running`; run ids in the ledger that the database does not have final.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pb, wait_for
from tests.integration.hosts_helpers import Freezer, HostPb, need_namespaces, verified_pid

pytestmark = [pytest.mark.soak, pytest.mark.postgres, pytest.mark.timeout(900)]

LEASE = 20.0  # seconds, shortened for the test
FREEZE = 90.0  # seconds host B stays frozen, at least
A_DOWN = 2.5 * LEASE  # seconds between A's kill -9 and its next scheduler
JOBS = 6
FINAL = {"succeeded", "failed", "timed_out", "interrupted", "lost", "skipped", "expired"}
# Each execution: "RUN_ID JOB OCCURRENCE start|end EPOCH_SECONDS HOSTNAME", 1-5 s apart
# (run id % 5 + 1), in steps of 0.1 s: like real work, a frozen copy has its rest to do
# after a thaw, rather than one sleep whose end has long passed.
COMMAND = (
    'line() { echo "$PONYBUNNY_RUN_ID $PONYBUNNY_JOB $PONYBUNNY_OCCURRENCE $1 '
    '$(date +%s.%N) $(uname -n)" >> LEDGER; }; '
    "line start; i=0; n=$(( (PONYBUNNY_RUN_ID % 5 + 1) * 10 )); "
    "while [ $i -lt $n ]; do sleep 0.1; i=$((i + 1)); done; line end"
)


@dataclass
class Copy:
    run_id: int
    job: str
    occurrence: str
    host: str
    start: float
    end: float | None = None


def read_ledger(path: Path) -> dict[int, Copy]:
    copies: dict[int, Copy] = {}
    for line in path.read_text().splitlines():
        run_id, job, occurrence, what, when, host = line.split()
        if what == "start":
            copies[int(run_id)] = Copy(int(run_id), job, occurrence, host, float(when))
        else:
            copies[int(run_id)].end = float(when)
    return copies


def long_copy(ledger: Path, host: str) -> bool:
    """Whether a copy on `host` is executing with at least 2 s of its sleep to go (each
    run sleeps run id % 5 + 1 seconds): the fault that follows finds it in flight."""
    now = time.time()
    return any(
        c.end is None and c.host == host and c.start + c.run_id % 5 + 1 - now >= 2
        for c in read_ledger(ledger).values()
    )


def runs_of(pb: Pb) -> list[dict[str, Any]]:
    result = pb("runs", "--json", "-n", "100000")
    assert result.code == 0, result.all
    return json.loads(result.out)  # type: ignore[no-any-return]


def running_on(pb: Pb, host: str) -> list[dict[str, Any]]:
    return [r for r in runs_of(pb) if r["state"] == "running" and r["hostname"] == host]


def after(iso: str | None, moment: float) -> bool:
    return iso is not None and datetime.fromisoformat(iso).timestamp() >= moment


def executing(
    copy: Copy, frozen: tuple[float, float], end_of_test: float, frozen_host: str
) -> list[tuple[float, float]]:
    """When a copy executed: start..end, or start..end of the test without an end line;
    minus the freeze for the frozen host's copies."""
    span = (copy.start, copy.end if copy.end is not None else end_of_test)
    if copy.host != frozen_host:
        return [span]
    parts = [(span[0], min(span[1], frozen[0])), (max(span[0], frozen[1]), span[1])]
    return [(a, b) for a, b in parts if b > a]


def overlapping(
    copies: list[Copy], frozen: tuple[float, float], end_of_test: float, frozen_host: str
) -> int:
    """Occurrences two copies of which executed at the same time."""
    by_occurrence: dict[tuple[str, str], list[Copy]] = defaultdict(list)
    for copy in copies:
        by_occurrence[(copy.job, copy.occurrence)].append(copy)
    doubled = 0
    for group in by_occurrence.values():
        spans = [executing(c, frozen, end_of_test, frozen_host) for c in group]
        if any(
            a < d and c < b
            for i, one in enumerate(spans)
            for other in spans[i + 1 :]
            for a, b in one
            for c, d in other
        ):
            doubled += 1
    return doubled


def test_three_hosts_one_killed_one_frozen_one_ahead(pb: Pb, tmp_path: Path, pg_url: str) -> None:
    need_namespaces()
    began = time.monotonic()
    ledger = tmp_path / "ledger"
    ledger.touch()
    freezer = Freezer(f"pony-soak-{os.getpid()}")
    homes = {name: tmp_path / name for name in ("A", "B", "C")}
    for home in homes.values():
        home.mkdir(mode=0o700)
    a = HostPb(homes["A"], "host-a")
    b = HostPb(homes["B"], "host-b", cgroup=freezer)
    c = HostPb(homes["C"], "host-c", faketime="+65s")
    hosts = (a, b, c)
    for runner in (pb, *hosts):
        runner.env.update(PONYBUNNY_DB=pg_url, PONYBUNNY_LEASE=str(LEASE), PONYBUNNY_WORKERS="4")
    frozen = (0.0, 0.0)
    try:
        for host in hosts:  # one after the other: the first creates the schema
            host("scheduler", "start", check=True)
        for n in range(JOBS):
            pb(
                "job",
                "add",
                f"work{n}",
                "--every",
                "5s",
                "--retries",
                "3",
                "--retry-delay",
                "1s",
                "--shell",
                "--",
                COMMAND.replace("LEDGER", str(ledger)),
                check=True,
            )
        # Every host takes part before anything goes wrong.
        assert wait_for(
            lambda: (
                {r["hostname"] for r in runs_of(pb) if r["state"] == "succeeded"}
                >= {h.name for h in hosts}
            ),
            120,
            interval=0.5,
        )

        # Host A: its scheduler killed with runs in flight; its keeper lives on.
        assert wait_for(lambda: long_copy(ledger, a.name), 120, interval=0.1)
        os.kill(verified_pid(a.home, "scheduler"), signal.SIGKILL)
        killed_at = time.monotonic()
        in_flight_a = {r["id"] for r in running_on(pb, a.name)}

        # Host B: frozen whole with runs in flight; F: its runs the database has running.
        assert wait_for(lambda: long_copy(ledger, b.name), 120, interval=0.1)
        freezer.freeze()
        frozen_at, frozen_mono = time.time(), time.monotonic()
        f_runs = {r["id"] for r in running_on(pb, b.name)}
        assert f_runs, "B froze with nothing running in the database"

        # A's runs end under its keeper and stay running in the database (their
        # outcomes wait), well past the lease: nobody rescued them.  (A run A claimed
        # but had not handed to its keeper when killed never runs: it has no ledger
        # line, and is rightly lost.)
        assert wait_for(lambda: time.monotonic() - killed_at >= A_DOWN, A_DOWN + 5)
        copies = read_ledger(ledger)
        executed_a = {i for i in in_flight_a if i in copies}
        assert executed_a, "A's runs in flight at the kill never started"
        assert wait_for(lambda: all(read_ledger(ledger)[i].end for i in executed_a), 60)
        still = {r["id"]: r["state"] for r in runs_of(pb) if r["id"] in executed_a}
        assert set(still.values()) == {"running"}, still
        a("scheduler", "start", check=True)

        # B's leases ran out: another host declared its runs lost and ran their retries.
        def rescued() -> bool:
            runs = runs_of(pb)
            lost = {r["id"] for r in runs if r["state"] == "lost"}
            of_f = {(r["job"], r["occurrence"]) for r in runs if r["id"] in f_runs}
            busy = [
                r for r in runs if (r["job"], r["occurrence"]) in of_f and r["state"] not in FINAL
            ]
            return f_runs <= lost and not busy

        assert wait_for(rescued, FREEZE + 120, interval=0.5)
        assert wait_for(lambda: time.monotonic() - frozen_mono >= FREEZE, FREEZE + 5)
        thawed_at = time.time()
        freezer.thaw()
        frozen = (frozen_at, thawed_at)

        # On thaw B stops its copies (fencing) and its late outcomes are refused.
        b_log = b.home / "scheduler.log"
        assert wait_for(
            lambda: all(f"Run {i}: refused running" in b_log.read_text() for i in f_runs), 60
        ), b_log.read_text()[-3000:]
        # B works again: it records new runs.
        assert wait_for(
            lambda: any(
                r["hostname"] == b.name
                and r["state"] == "succeeded"
                and after(r["started_at"], thawed_at)
                for r in runs_of(pb)
            ),
            120,
            interval=0.5,
        )

        # The end: no new runs, everything in flight finishes, every host stops.
        for n in range(JOBS):
            pb("job", "pause", f"work{n}", check=True)
        assert wait_for(
            lambda: not [r for r in runs_of(pb) if r["state"] == "running"], 120, interval=0.5
        )
        status = c("scheduler", "status", "--json")
        for host in hosts:
            # `pb scheduler stop` waits with time.sleep(), which libfaketime breaks (EINVAL):
            # C stops with the real clock (it only signals and waits).
            host("scheduler", "stop", check=True, env={"LD_PRELOAD": ""})
        end_of_test = time.time()

        runs = {r["id"]: r for r in runs_of(pb)}
        copies = read_ledger(ledger)
        lost = {i for i, r in runs.items() if r["state"] == "lost"}
        finished_lost = {i for i in lost if i in copies and copies[i].end is not None}
        f_copies = [copies[i] for i in f_runs if i in copies]
        report = {
            "seconds": round(time.monotonic() - began),
            "runs": len(runs),
            "executions": len(copies),
            "by host": {h.name: sum(r["hostname"] == h.name for r in runs.values()) for h in hosts},
            "A in flight at kill": len(executed_a),
            "B in flight at freeze": len(f_runs),
            "lost": len(lost),
            "B copies: ended before the freeze, unrecorded": sum(
                c.end is not None and c.end < frozen_at for c in f_copies
            ),
            "B copies: ended after the thaw, before the fence": sum(
                c.end is not None and c.end >= thawed_at for c in f_copies
            ),
            "B copies: stopped by the fence (no end line)": sum(c.end is None for c in f_copies),
        }
        print("\nthree hosts:", report)

        assert overlapping(list(copies.values()), frozen, end_of_test, b.name) == 0
        assert finished_lost <= f_runs, finished_lost - f_runs
        # B recorded nothing over the rescuer: its runs stay lost.
        assert all(runs[i]["state"] == "lost" for i in f_runs), f_runs
        assert lost <= f_runs | {i for i in lost if i not in copies}, lost
        assert not [i for i, r in runs.items() if r["state"] == "running"]
        unrecorded = {i for i in copies if runs.get(i, {}).get("state") not in FINAL}
        assert not unrecorded, unrecorded
        ended = {i for i, copy in copies.items() if copy.end is not None}
        assert {runs[i]["state"] for i in ended - f_runs} <= {"succeeded"}
        # A's runs: finished under the keeper, recorded once by A's next scheduler.
        assert all(runs[i]["state"] == "succeeded" for i in executed_a), executed_a
        assert "renewing the leases" in (a.home / "keeper.log").read_text()
        # C measured its clock against the database's and says so.
        offset = json.loads(status.out)["clockOffsetSeconds"]
        assert offset is not None and -70 < offset < -60, status.out
    finally:
        freezer.thaw()
        for host in hosts:
            host.cleanup()
        freezer.remove()
