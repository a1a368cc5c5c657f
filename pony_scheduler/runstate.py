"""The states of a run and the moves between them (supervisor's process states, for runs)."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    QUEUED = "queued"  # waiting for its due time and a free worker
    RUNNING = "running"  # claimed by one scheduler, which holds a lease on it
    SUCCEEDED = "succeeded"  # exit status 0
    FAILED = "failed"  # non-zero exit status, or the command could not be started
    TIMED_OUT = "timed_out"  # killed for exceeding the job's timeout
    INTERRUPTED = "interrupted"  # stopped by an orderly shutdown; runs again after the next start
    LOST = "lost"  # its scheduler died (lease expired or found dead on restart)
    SKIPPED = "skipped"  # never run: missed while down, or the previous run still ran


# Failures that the job's retry policy answers with another attempt.
RETRYABLE = frozenset({RunState.FAILED, RunState.TIMED_OUT, RunState.LOST})

ALLOWED = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.SKIPPED}),
    # QUEUED again: claimed ahead of a free worker and released before it started.
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT,
                                 RunState.INTERRUPTED, RunState.LOST, RunState.QUEUED}),
}


def check_transition(old: RunState, new: RunState) -> None:
    if new not in ALLOWED.get(old, frozenset()):
        raise ValueError(f"a run cannot go from {old} to {new}")
