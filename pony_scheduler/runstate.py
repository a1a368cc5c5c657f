"""The states of a run and the moves between them (supervisor's process states, for runs).

Light on purpose: the CLI imports it for `--state` choices.  Who makes each move, and on
which event, is the table in README "How it works"; the store's one guarded write
(store/transitions.py) refuses any move that is not listed here.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    QUEUED = "queued"  # waiting for its due time, a free worker or its job's previous run
    RUNNING = "running"  # claimed by one scheduler, which holds a lease on it
    SUCCEEDED = "succeeded"  # exit status 0
    FAILED = "failed"  # non-zero exit status, killed, or the command could not be started
    TIMED_OUT = "timed_out"  # killed for exceeding the job's timeout
    INTERRUPTED = "interrupted"  # stopped by an orderly shutdown; runs again after the next start
    LOST = "lost"  # its processes and outcome are gone (its scheduler died, the lease expired)
    SKIPPED = "skipped"  # never run: missed while down, or the previous run still ran
    EXPIRED = "expired"  # never run: could not start within the job's start deadline


# Run ids are 64-bit integers in both databases: a larger one names no run, and would
# overflow the driver's parameter rather than find nothing (the CLI and the API refuse it).
RUN_ID_MAX = 2**63 - 1

# Settled: the run is over and no write may change its state again.
FINAL = frozenset(set(RunState) - {RunState.QUEUED, RunState.RUNNING})

ALLOWED = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.SKIPPED, RunState.EXPIRED}),
    # QUEUED again: claimed ahead of a free worker and released before it started.
    # RUNNING again: adopted by another scheduler (a hand-over) while the keeper runs it.
    RunState.RUNNING: frozenset(
        {
            RunState.SUCCEEDED,
            RunState.FAILED,
            RunState.TIMED_OUT,
            RunState.INTERRUPTED,
            RunState.LOST,
            RunState.QUEUED,
            RunState.RUNNING,
        }
    ),
}


class TransitionRefused(ValueError):
    """A move the table above does not allow: a bug in the caller, never applied."""


def check_transition(old: RunState, new: RunState) -> None:
    """Raise TransitionRefused unless `old` -> `new` is in ALLOWED."""
    if new not in ALLOWED.get(old, frozenset()):
        raise TransitionRefused(f"a run cannot go from {old} to {new}")
