"""Run policy: what happens to a run, and why.  Pure: typed records in, decisions out.

This module owns every decision about a run once it exists (occurrences.plan decides
which occurrences become runs); nothing here reads a clock,
a database or a process (`now` and the random draw for jitter are passed in):

  admit()   whether a due queued run starts now, waits, is skipped (overlap policy) or
            expires (start deadline; Kubernetes' startingDeadlineSeconds)
  settle()  what a finished run's outcome makes of it, and what follows (retry, resume)
  lose()    what a run whose processes and outcome are gone becomes
  run_times()  when a finished run started and ended, made consistent with its duration

The store builds the records from rows and writes the decisions through its one guarded
transition function; the executor only reports outcomes.  The run state machine these
functions drive is the table in README "How it works".
"""

from __future__ import annotations

import signal as signals
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pony_scheduler.durations import format_duration
from pony_scheduler.runstate import RunState

DEFAULT_MAX_QUEUED = 10  # overlap "queue": runs of one job waiting behind the running one
MIN_DEADLINE = 1.0  # seconds: the shortest start deadline, default or given


class Trigger(StrEnum):
    SCHEDULE = "schedule"  # its occurrence came due
    MANUAL = "manual"  # pb job run
    RETRY = "retry"  # the previous attempt failed and the job has retries left
    CATCH_UP = "catch_up"  # missed while no scheduler could run it; the policy said run
    RESUME = "resume"  # the previous attempt was interrupted by an orderly shutdown


class Overlap(StrEnum):
    SKIP = "skip"
    QUEUE = "queue"
    ALLOW = "allow"


class CatchUp(StrEnum):
    SKIP = "skip"
    ONCE = "once"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Policy:
    """A job's run policy, as stored on its row.  Seconds throughout."""

    retries: int = 0
    retry_delay_s: float = 10.0
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.ONCE
    start_deadline_s: float | None = 60.0  # None: never expires
    max_queued: int = DEFAULT_MAX_QUEUED


@dataclass(frozen=True, slots=True)
class Run:
    """One attempt of one occurrence of a job, as the loop holds it while it runs.

    `batch` ties together the runs one catch-up decision made: they run one after
    another, so a job's overlap policy is not applied among them.
    """

    id: int
    job_id: int
    job: str
    occurrence: datetime  # UTC: the scheduled instant it serves
    attempt: int  # 1 for the first attempt
    trigger: Trigger
    due_at: datetime  # UTC: it may not start before
    policy: Policy
    batch: int | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A run this scheduler has just claimed, with what starting it needs."""

    run: Run
    epoch: int  # the fencing token this claim holds (runs.epoch)
    command: tuple[str, ...]  # argv, or one shell string when `shell`
    shell: bool
    cwd: str | None
    env: Mapping[str, str]  # the job's own --env
    umask: int
    timeout_s: float | None
    env_file: str | None = None
    secret_env: frozenset[str] = frozenset()
    leftovers: str = "kill"  # what happens to processes left when the main one exits
    memory_max: int | None = None  # bytes
    cpu_max: float | None = None  # CPUs
    tasks_max: int | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """A run's main process exists: what a restart needs to find it again."""

    run_id: int
    pid: int
    pid_start: int | None  # /proc start time, clock ticks since boot
    output_path: str | None


@dataclass(frozen=True, slots=True)
class Holding:
    """A running run as the database has it: what a scheduler that adopts it, or records
    an outcome for it, needs."""

    run: Run
    epoch: int
    claimed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A running run whose scheduler is gone (lease expired, or found dead here)."""

    run: Run
    epoch: int
    claimed_by: str | None
    host: str | None  # machine id:boot id it ran on
    pid: int | None
    pid_start: int | None
    started_at: datetime | None = None  # its claim's stamp: a lost run's duration runs from it


class Ending(StrEnum):
    """How a run's main process ended, as the executor saw it (it decides nothing else)."""

    EXITED = "exited"  # it exited or was killed by a signal nobody here sent
    NOT_STARTED = "not_started"  # the command could not be started
    TIMED_OUT = "timed_out"  # stopped for exceeding the job's timeout
    KILLED = "killed"  # stopped on request (pb runs kill)
    STOPPED = "stopped"  # stopped by an orderly shutdown (drain)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the executor reports when a run is over.  UTC datetimes, seconds, bytes.

    The executor (today threads in the scheduler, later the run keeper) fills what it
    knows; the fields after `tail` are optional so that containment and fencing can add
    what they measure without reshaping the record.
    """

    run_id: int
    ending: Ending
    finished_at: datetime
    exit_code: int | None = None  # 0-255 when the main process exited
    signal: int | None = None  # the signal number that killed it
    detail: str | None = None  # the executor's words: "cannot start: ...", "killed by ..."
    started_at: datetime | None = None
    pid: int | None = None
    pid_start: int | None = None
    output_path: str | None = None
    output_bytes: int = 0
    output_note: str | None = None  # "output incomplete: No space left on device"
    tail: bytes = b""  # the last TAIL_BYTES of output, exactly as written
    leftovers: int = 0  # processes still alive when the main process exited
    leftovers_kept: bool = False
    peak_memory: int | None = None  # bytes
    cpu_s: float | None = None
    containment: str | None = None  # cgroup2, cgroup1, pgroup
    token: int | None = None  # the lease epoch the run was launched under
    receipt: str | None = None  # the keeper's id for it, acknowledged once recorded
    # Seconds from the spawn to the reaping of its main process, on the monotonic clock
    # (None when it did not start, or from a keeper older than the field).
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class NextAttempt:
    due_at: datetime
    trigger: Trigger


@dataclass(frozen=True, slots=True)
class Settlement:
    """A run's final state and what follows it; what the store writes for an outcome."""

    run_id: int
    state: RunState
    reason: str | None
    finished_at: datetime
    exit_code: int | None = None  # as a shell shows it: 128+N for signal N
    signal: int | None = None
    next_attempt: NextAttempt | None = None
    # When its process started (run_times), which replaces the claim's time in the
    # run's row; None keeps the claim's (a run that did not start, or was lost).
    started_at: datetime | None = None

    def duration_s(self, claimed_at: datetime | None) -> float | None:
        """Seconds from its start (its process's, else the claim's) to its end."""
        start = self.started_at or claimed_at
        return None if start is None else (self.finished_at - start).total_seconds()


# ---------------------------------------------------------------- what follows a run

RETRYABLE = frozenset({RunState.FAILED, RunState.TIMED_OUT, RunState.LOST})


def settle(
    run: Run,
    outcome: Outcome,
    now: datetime,
    rand: float,
    claimed_at: datetime | None = None,
) -> Settlement:
    """The final state of `run` (claimed at `claimed_at`) from its outcome, and its next
    attempt if any; its start and end are run_times().

    Exit 0 succeeds; another status, a signal or a command that cannot start fails; a
    timeout is `timed_out`; a drain is `interrupted` and resumes at once; a run killed
    on request fails and is not retried (someone wanted it stopped).  Failures are
    retried while attempts remain, after backoff_delay(attempt, retry_delay_s, rand).
    Exit codes are kept as a shell shows them (128+N for signal N, bash(1)).
    """
    code, sig = outcome.exit_code, outcome.signal
    if sig is not None:
        code = 128 + sig
    state, reason = _verdict(outcome)
    notes = [note for note in (reason, _leftover_note(outcome), outcome.output_note) if note]
    after = None
    if state is RunState.INTERRUPTED:
        after = NextAttempt(now, Trigger.RESUME)
    elif state in RETRYABLE and outcome.ending is not Ending.KILLED:
        after = _retry(run, now, rand)
    started, finished = run_times(outcome, claimed_at)
    return Settlement(run.id, state, "; ".join(notes) or None, finished, code, sig, after, started)


# How far the wall-clock length of a run may stray from its monotonic duration before the
# wall clock is taken to have been stepped: more than the stamps' rounding (ms) and the
# hop from the keeper's clock to the database's, far less than any real step.
STEP_TOLERANCE_S = 1.0


def run_times(outcome: Outcome, claimed_at: datetime | None) -> tuple[datetime | None, datetime]:
    """When a run's process started and when it ended, as recorded (database clock).

    The duration users mean is the process's: from the keeper's spawn, not from the
    claim a moment before (README "Clock steps").  Its start is the keeper's stamp, but
    never before the claim: a clock stepped back between the two would put it there.
    Its end is the keeper's stamp unless the wall clock was stepped while it ran - the
    end lies before the start, or the two are further apart than the monotonic duration
    by more than STEP_TOLERANCE_S - and then it is the start plus that duration, so a
    step neither makes a duration negative nor inflates it by the step (systemd keeps
    both clocks' stamps for the same reason).  Without a duration (a run that did not
    start, an older keeper) the end is only kept from lying before the start or claim.
    """
    start = outcome.started_at
    if start is not None and claimed_at is not None:
        start = max(start, claimed_at)
    finished = outcome.finished_at
    duration = outcome.duration_s
    if start is not None and duration is not None:
        wall = (finished - start).total_seconds()
        if wall < 0 or abs(wall - duration) > STEP_TOLERANCE_S:
            finished = start + timedelta(seconds=duration)
    floor = start or claimed_at
    if floor is not None and finished < floor:
        finished = floor
    return start, finished


def _verdict(outcome: Outcome) -> tuple[RunState, str | None]:
    ending = outcome.ending
    if ending is Ending.TIMED_OUT:
        return RunState.TIMED_OUT, outcome.detail or "timed out"
    if ending is Ending.STOPPED:
        return RunState.INTERRUPTED, outcome.detail or "interrupted by scheduler shutdown"
    if ending in (Ending.NOT_STARTED, Ending.KILLED):
        return RunState.FAILED, outcome.detail or str(ending)
    if outcome.signal is not None:
        # The executor may know why ("killed by signal 9 (SIGKILL): out of memory
        # (memory_max)"): an OOM kill inside the job's limit is not a mystery crash.
        why = (outcome.detail or "").partition(": ")[2]
        return RunState.FAILED, f"killed by signal {signal_name(outcome.signal)}" + (
            f": {why}" if why else ""
        )
    if outcome.exit_code == 0:
        return RunState.SUCCEEDED, None
    return RunState.FAILED, f"exit status {outcome.exit_code}"


def _leftover_note(outcome: Outcome) -> str | None:
    if not outcome.leftovers:
        return None
    plural = "es" if outcome.leftovers != 1 else ""
    fate = "left running (--leftovers keep)" if outcome.leftovers_kept else "killed"
    return f"left {outcome.leftovers} process{plural} behind, {fate}"


def _retry(run: Run, now: datetime, rand: float) -> NextAttempt | None:
    from pony_scheduler.scheduler.schedule import backoff_delay

    if run.attempt > run.policy.retries:
        return None
    delay = backoff_delay(run.attempt, run.policy.retry_delay_s, rand=rand)
    return NextAttempt(now + timedelta(seconds=delay), Trigger.RETRY)


def lose(run: Run, cause: str, now: datetime, rand: float) -> Settlement:
    """A run whose processes and outcome are really gone: `lost`, retried by its policy."""
    return Settlement(
        run.id, RunState.LOST, f"lost: {cause}", now, next_attempt=_retry(run, now, rand)
    )


def signal_name(number: int) -> str:
    """SIGTERM for 15; "signal 99" for numbers without a name."""
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(exit_code: int | None, signal: int | None) -> str:
    """An exit status as admins read it: "0", "3", "143 (SIGTERM)", "-"."""
    if exit_code is None:
        return "-"
    return f"{exit_code} ({signal_name(signal)})" if signal is not None else str(exit_code)


# ---------------------------------------------------------------- may a due run start


class Verdict(StrEnum):
    START = "start"
    WAIT = "wait"  # stays queued: its job's previous run, or no free worker
    SKIP = "skip"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class JobNow:
    """What the claim knows about a queued run's job at this moment."""

    busy_batches: frozenset[int | None] = frozenset()  # batches of its running runs
    last_finished_at: datetime | None = None  # its latest run's end, any state

    @property
    def busy(self) -> bool:
        return bool(self.busy_batches)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the scheduler knows about itself when it claims."""

    started_at: datetime  # when this scheduler started (UTC)
    workers: int
    saturated: bool = False  # every worker was busy at the last claim
    # When a claim last filled every free worker and left due runs waiting: the workers
    # were what held them back then (a herd), not the scheduler (None: never).
    filled_at: datetime | None = None


START = Admission(Verdict.START)
WAIT = Admission(Verdict.WAIT)


def admit(run: Run, job: JobNow, capacity: Capacity, now: datetime) -> Admission:
    """Whether queued `run`, due at or before `now`, starts now.

    Overlap (skip/queue/allow) applies against its job's runs already in progress, never
    among the runs of one catch-up decision, which wait for each other.  The start
    deadline counts from when the run could first start: its due time, the end of the
    previous run it waited behind, or, for a run resuming after a shutdown, this
    scheduler's start.  A run still held back by its own job is bounded by --max-queued
    instead, so it does not expire while it waits its turn.
    """
    if job.busy:
        same_batch = run.batch is not None and job.busy_batches == frozenset({run.batch})
        if same_batch or run.policy.overlap is Overlap.QUEUE:
            return WAIT
        if run.policy.overlap is Overlap.SKIP:
            return Admission(Verdict.SKIP, "previous run still running")
    expired = _expiry(run, job, capacity, now)
    return Admission(Verdict.EXPIRE, expired) if expired else START


def _expiry(run: Run, job: JobNow, capacity: Capacity, now: datetime) -> str | None:
    deadline = run.policy.start_deadline_s
    if deadline is None:
        return None
    since = run.due_at
    if job.last_finished_at is not None and run.policy.overlap is not Overlap.ALLOW:
        since = max(since, job.last_finished_at)
    if run.trigger is Trigger.RESUME:
        since = max(since, capacity.started_at)
    late = (now - since).total_seconds()
    if late <= deadline:
        return None
    if since + timedelta(seconds=deadline) < capacity.started_at:
        cause = "no scheduler was running"
    elif capacity.saturated or (capacity.filled_at is not None and capacity.filled_at >= since):
        cause = f"all {capacity.workers} workers were busy"
    else:
        cause = f"the scheduler was {format_duration(late)} behind"
    return f"not started within its start deadline ({format_duration(deadline)}): {cause}"


def policy_from(
    retries: int,
    retry_delay_s: float,
    overlap: str,
    catch_up: str,
    start_deadline_s: float | None,
    max_queued: int,
) -> Policy:
    """A Policy from stored values; ValueError names a value this version cannot read."""
    return Policy(
        retries, retry_delay_s, Overlap(overlap), CatchUp(catch_up), start_deadline_s, max_queued
    )
