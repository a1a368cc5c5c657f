"""Hand-over between the schedulers of one home, around the run keeper that outlives them.

At start a scheduler adopts the runs the keeper holds (they keep running; their leases
become its own) and records the outcomes the keeper kept while no scheduler listened; at
a restart (SIGUSR2: `pb scheduler restart`, `start --force`, `systemctl restart`) it
leaves them to the next one; and if the keeper itself dies, the runs it held are lost
and a new keeper is started.  docs/KEEPER.md has the keeper's side.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from pony_scheduler.config import containment_kept
from pony_scheduler.keeper import protocol as kp
from pony_scheduler.scheduler import recovery, runs
from pony_scheduler.scheduler.runs import Outcome
from pony_scheduler.store.runs import Finished
from pony_scheduler.textsafe import for_log

if TYPE_CHECKING:
    from pony_scheduler.scheduler.loop import InFlight, WorkLoop

log = logging.getLogger("pony_scheduler.scheduler")


def _keeper_meta(loop: WorkLoop) -> dict[str, Any]:
    """keeper.json: what the protocol's welcome does not carry (a newer scheduler adopts
    older keepers), such as why its containment is what it is."""
    from pony_scheduler.keeper.protocol import META_FILE
    from pony_scheduler.lifecycle.pidfile import read_meta

    return read_meta(loop.runtime.settings.home / META_FILE) or {}


def _why_not_cgroup2(loop: WorkLoop, containment: str) -> str:
    """ " (why)" from keeper.json when the keeper contains by less than cgroup2."""
    if containment == "cgroup2":
        return ""
    why = _keeper_meta(loop).get("containmentWhy")
    return f" ({for_log(why)})" if isinstance(why, str) and why else ""


def take_over(loop: WorkLoop, welcome: kp.Welcome) -> None:
    """Adopt what the keeper holds and queue the outcomes it kept for recording."""
    from pony_scheduler.scheduler.loop import InFlight

    log.info(
        "Run keeper PID %d (version %s); containment: %s%s",
        welcome.pid,
        welcome.version,
        welcome.containment,
        _why_not_cgroup2(loop, welcome.containment),
    )
    kept = containment_kept(loop.runtime.settings.containment, _keeper_meta(loop))
    if kept:
        log.warning("Containment: %s", kept)
    now = loop.now()
    held = {h.run_id: epoch for h in welcome.runs if (epoch := _epoch(h.token)) is not None}
    # Runs that finished while no scheduler listened are adopted too: until their outcome
    # is recorded they are running, and ours, not a dead predecessor's lost runs.
    done = {o.run_id: epoch for o in welcome.outcomes if (epoch := _epoch(o.token)) is not None}
    adopted = loop.store.adopt(loop.me, list({**done, **held}.items()), now, loop.lease)
    for holding in adopted:
        if holding.run.id in held:
            loop.in_flight[holding.run.id] = InFlight(
                holding.run, holding.epoch, holding.claimed_at or now
            )
    running = [h.run.id for h in adopted if h.run.id in held]
    if running:
        log.info(
            "Adopted %d running run(s) from the previous scheduler: %s",
            len(running),
            ", ".join(map(str, running)),
        )
    unstarted = recovery.never_started(
        loop.store,
        loop.scheduler_id,
        str(loop.runtime.settings.home),
        welcome.sole_keeper_of,
        set(held) | set(done),
        now,
    )
    if unstarted:
        log.info(
            "Queued again %d run(s) that the previous scheduler claimed but had not "
            "handed to the run keeper when it died (they never started): %s",
            len(unstarted),
            ", ".join(map(str, unstarted)),
        )
        loop.upcoming_dirty = loop.kicked = True
    for run_id in sorted(set(held) - {h.run.id for h in adopted}):
        log.error(
            "Run %d: the keeper still runs it, but the database no longer has it "
            "running under this epoch (another scheduler declared it lost); stopping "
            "it",
            run_id,
        )
        loop.executor.kill(run_id, "the scheduler: another scheduler declared it lost")
    for outcome in welcome.outcomes:
        loop.journal.put(loop.executor.outcome(outcome))
    if welcome.outcomes:
        log.info(
            "Recording %d outcome(s) the keeper kept while no scheduler listened",
            len(welcome.outcomes),
        )


def flight_of(loop: WorkLoop, outcome: Outcome) -> InFlight | None:
    """The run an outcome belongs to when this scheduler did not launch it (adopted, or
    replayed after a crash); None, with the outcome acknowledged, when the database no
    longer has that run running (recorded already, rescued, removed)."""
    from pony_scheduler.scheduler.loop import InFlight

    holding = loop.store.holdings([outcome.run_id]).get(outcome.run_id)
    if holding is None:
        # Both outcomes, so that neither is silently dropped (issue: a run that exited 0
        # during a pause was recorded lost with no line saying so).
        found = loop.store.get_run(outcome.run_id)
        recorded = (
            f"recorded {found['state']}" + (f" ({found['reason']})" if found["reason"] else "")
            if found
            else "no longer in the database"
        )
        log.warning(
            "Run %d: its outcome here (%s, %s) came after the run stopped running here; "
            "it is %s, and that stays",
            outcome.run_id,
            outcome.ending,
            _status(outcome),
            recorded,
        )
        loop.executor.ack([outcome.receipt or ""])
        return None
    epoch = outcome.token if outcome.token is not None else holding.epoch
    return InFlight(holding.run, epoch, holding.claimed_at or outcome.finished_at)


def keeper_lost(loop: WorkLoop, why: Exception) -> None:
    """The keeper died (killed, crashed): its runs' processes and outcomes are gone, so
    they are lost; a new keeper is started (it finds what the old one journaled)."""
    if loop.executor.keeper_retiring:  # asked to exit (a drain it could not end)
        log.info("The run keeper that was left draining has exited; starting a new one")
    else:
        log.error("The run keeper is gone (%s); starting a new one", why)
    welcome = loop.executor.connect(loop.scheduler_id)
    alive = {h.run_id for h in welcome.runs} | {o.run_id for o in welcome.outcomes}
    waiting = set(loop.executor.pending_ids())
    now = loop.now()
    for run_id, flight in list(loop.in_flight.items()):
        if run_id in alive or run_id in waiting:
            continue
        del loop.in_flight[run_id]
        settlement = runs.lose(flight.run, "its run keeper died", now, random.random())
        log.warning("Run %d was lost (its run keeper died)", run_id)
        loop.finished.append(
            Finished(flight.run, flight.epoch, settlement, None, flight.claimed_at)
        )
    for outcome in welcome.outcomes:
        loop.journal.put(loop.executor.outcome(outcome))
    loop.kicked = True


def hand_over(loop: WorkLoop) -> None:
    """Leave the running runs to the keeper and the next scheduler of this home."""
    running = len(loop.executor.in_flight)
    if running:
        log.info(
            "Handing %d running run(s) over to the next scheduler; they keep running "
            "under the run keeper",
            running,
        )
    loop.close_books()
    loop.executor.hand_over()


def _status(outcome: Outcome) -> str:
    if outcome.exit_code is not None:
        return f"exit status {runs.describe_exit(outcome.exit_code, outcome.signal)}"
    if outcome.signal is not None:
        return f"killed by {runs.signal_name(outcome.signal)}"
    return "no exit status"


def _epoch(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None
