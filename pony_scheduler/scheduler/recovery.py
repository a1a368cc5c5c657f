"""Finding runs whose scheduler died, and surviving a database that hiccups.

A run is abandoned when its lease expired (its scheduler stopped heartbeating: killed,
powered off, another host gone) or, sooner, when its scheduler ran on this host and that
process is verifiably gone (after `kill -9` and a restart we need not wait for the lease).
Its job process may still be running, orphaned: it is stopped (after checking it is the
very process we started) so that the retry does not run beside it.  A run its dead
scheduler claimed but never handed to the run keeper is not lost: it never started, and
goes back to the queue (never_started).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from pony_scheduler.lifecycle.pidfile import boot_id, proc_start_time
from pony_scheduler.scheduler import host, runs
from pony_scheduler.scheduler.runs import Abandoned
from pony_scheduler.store import Store
from pony_scheduler.store.common import first_line
from pony_scheduler.waiting import pause

log = logging.getLogger("pony_scheduler.scheduler")
SCHEDULER_VAR = "PONYBUNNY_SCHEDULER_ID"  # in each run's environment: who started it
T = TypeVar("T")


def retrying(action: Callable[[], T], attempts: int = 6, deadline: float | None = None) -> T:
    """Run a short database write again when the database is briefly unavailable
    (locked, restarting); results must not be dropped because of a hiccup.  No attempt
    starts after `deadline` (time.monotonic() seconds), though one under way is not cut
    short (it can wait the SQLite busy timeout).  Raises the last DBAPIError."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except DBAPIError as exc:
            late = deadline is not None and time.monotonic() + delay > deadline
            if attempt == attempts or late:
                raise
            log.warning("Database write failed (%s); retrying in %.1fs", first_line(exc), delay)
            pause(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def dead_predecessors(store: Store, me: str, home: str) -> list[str]:
    """Earlier schedulers of this home on this host whose process is gone.  Their runs
    that this scheduler did not adopt from the home's run keeper (held, or finished with
    an outcome) are really gone.  Another home's runs are never judged here: its keeper
    may hold them, and their leases say whether they live.

    Only a scheduler whose process this one can see is judged by the process table
    (host.sees_processes_of: the same machine id, boot and pid namespace).  One recorded
    under our machine id from another boot or pid namespace is an earlier boot, a cloned
    VM or a container beside us; we cannot tell which, so its runs are judged by their
    leases, like another host's, and never declared dead at sight."""
    return [
        row["id"]
        for row in store.predecessors(host.machine_id(), home, exclude=me)
        if host.sees_processes_of(row) and proc_start_time(row["pid"]) != row["proc_start"]
    ]


def identity_warnings(store: Store, me: str, since: datetime) -> list[str]:
    """What is wrong with this host's identity, one line each: no machine id, or another
    live scheduler (a heartbeat after `since`, database time) under our machine id from
    another boot, which is a cloned VM that kept its machine-id(5)."""
    machine = host.machine_id()
    if not machine:
        return [
            "This host has no machine id (/etc/machine-id): hosts sharing a database "
            "are told apart by boot id and pid namespace alone; create one with "
            "'systemd-machine-id-setup' (a container: give it its own /etc/machine-id)"
        ]
    twins = sorted(
        {
            f"{row['hostname']} (pid {row['pid']})"
            for row in store.live_schedulers(machine, since)
            if row["id"] != me and row["boot_id"] != boot_id()
        }
    )
    if not twins:
        return []
    return [
        f"Scheduler on {', '.join(twins)} shares this host's machine id {machine} from "
        "another boot: a cloned VM? Give each its own (rm /etc/machine-id; "
        "systemd-machine-id-setup); meanwhile their runs are judged by lease only"
    ]


def never_started(
    store: Store,
    me: str,
    home: str,
    sole_keeper_of: Iterable[str],
    accounted: Iterable[int],
    now: datetime,
) -> list[int]:
    """Give back to the queue (running -> queued, as at a stop) the runs that a dead
    predecessor of this home claimed and never handed to the run keeper: it was killed
    between its claim and the launch (a run claimed ahead of a free worker waits that
    way for up to half a second).  Returns their ids.

    Only for predecessors whose first and only keeper is the one we are connected to
    (`sole_keeper_of`, from its welcome): every launch of theirs came to it, and the
    welcome lists every run it holds and every outcome not yet recorded (`accounted`),
    so their other running runs never started.  Called once, right after the welcome:
    the keeper takes no launch from a connection it has superseded.  A predecessor whose
    runs a dead keeper may have held is left to `abandoned` (lost: really gone)."""
    candidates = set(sole_keeper_of) & set(dead_predecessors(store, me, home))
    if not candidates:
        return []
    skip = set(accounted)
    back = [
        (found.run.id, found.epoch)
        for found in store.abandoned_runs(now, sorted(candidates), expired=False)
        if found.claimed_by in candidates and found.run.id not in skip and found.pid is None
    ]
    return sorted(run_id for run_id, epoch in back if store.release_runs([(run_id, epoch)]))


def abandoned(store: Store, me: str, home: str, now: datetime, judge_leases: bool = True) -> int:
    """Settle abandoned runs as lost (runs.lose decides what follows); returns how many.
    Runs of predecessors found dead here always; runs whose lease expired only when
    `judge_leases` (the loop says so once every host has had a lease to renew since the
    database was last out of reach: see Loop.may_judge_leases)."""
    dead = dead_predecessors(store, me, home)
    handled = 0
    for lost in store.abandoned_runs(now, dead, expired=judge_leases):
        if lost.claimed_by == me:
            continue  # ours, and we are alive: the lease was renewed late, not lost
        cause = (
            "its scheduler died"
            if lost.claimed_by in dead
            else "its scheduler stopped renewing the lease"
        )
        settlement = runs.lose(lost.run, cause, now, random.random())
        # Recorded first: a host that renewed the lease meanwhile keeps the run, and
        # its processes are left alone.  Its retry is queued in the same transaction but
        # claimed later, after the orphan is stopped here.
        if store.settle_lost(lost, settlement, now, holder_dead=lost.claimed_by in dead):
            _stop_orphan(lost)
            log.warning("Run %d was lost (%s)", lost.run.id, cause)
            handled += 1
    for scheduler_id in dead:
        store.mark_scheduler_gone(scheduler_id)
    return handled


def _stop_orphan(lost: Abandoned) -> None:
    """Kill the process group of a lost run if it is still here and verifiably that run's."""
    if lost.host != host.host_id():  # another machine, or an earlier boot: nothing here
        return
    if lost.pid and lost.pid_start is not None:
        if proc_start_time(lost.pid) == lost.pid_start:  # else gone, or someone else's now
            _kill_group(lost.run.id, lost.pid)
        return
    # Its scheduler died before writing the pid (it is written with the next transaction,
    # within moments of the start): find the run's processes by what they inherited.
    groups = set()
    for found in run_processes(lost.run.id, lost.claimed_by or ""):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(found))
    for pgid in sorted(groups):
        _kill_group(lost.run.id, pgid)


def _kill_group(run_id: int, pgid: int) -> None:
    log.warning("Run %d: stopping its orphaned process group %d", run_id, pgid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_processes(run_id: int, scheduler_id: str) -> list[int]:
    """Processes of ours whose environment names this run and the scheduler that started it
    (the scheduler's id is unique: another home's run with the same id never matches)."""
    if not scheduler_id:
        return []
    wanted = {f"PONYBUNNY_RUN_ID={run_id}".encode(), f"{SCHEDULER_VAR}={scheduler_id}".encode()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = set(handle.read().split(b"\0"))
        except OSError:  # gone, or not ours to read
            continue
        if wanted <= environ:
            found.append(int(entry))
    return found
