"""The run policy (scheduler/runs.py), with `now` passed in: catch-up x overlap x retries
x lost x start deadlines, without processes or a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pony_scheduler.errors import ConfigError
from pony_scheduler.runstate import ALLOWED, RunState
from pony_scheduler.scheduler import occurrences, runs
from pony_scheduler.scheduler.clock import ClockWatch
from pony_scheduler.scheduler.runs import (
    Admission,
    Capacity,
    CatchUp,
    Ending,
    JobNow,
    Outcome,
    Overlap,
    Policy,
    Run,
    Trigger,
    Verdict,
)
from pony_scheduler.scheduler.schedule import (
    Schedule,
    at_schedule,
    count_between,
    cron_schedule,
    every_schedule,
    manual_schedule,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOURLY = cron_schedule("0 * * * *", "UTC")
MINUTELY = cron_schedule("* * * * *", "UTC")


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def a_run(**changes: object) -> Run:
    run = Run(7, 1, "backup", T0, 1, Trigger.SCHEDULE, T0, Policy(retries=2, retry_delay_s=10))
    return replace(run, **changes)  # type: ignore[arg-type]


def outcome(ending: Ending = Ending.EXITED, **fields: object) -> Outcome:
    return Outcome(7, ending, T0 + s(5), **fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- settle


def test_exit_zero_succeeds_with_nothing_after() -> None:
    done = runs.settle(a_run(), outcome(exit_code=0), T0 + s(5), 0.5)
    assert (done.state, done.reason, done.exit_code, done.next_attempt) == (
        RunState.SUCCEEDED,
        None,
        0,
        None,
    )


def test_failure_is_retried_after_backoff_while_attempts_remain() -> None:
    now = T0 + s(5)
    first = runs.settle(a_run(), outcome(exit_code=3), now, 0.5)
    assert (first.state, first.reason, first.exit_code) == (RunState.FAILED, "exit status 3", 3)
    assert first.next_attempt == runs.NextAttempt(now + s(10), Trigger.RETRY)
    second = runs.settle(a_run(attempt=2), outcome(exit_code=3), now, 0.5)
    assert second.next_attempt == runs.NextAttempt(now + s(20), Trigger.RETRY)
    last = runs.settle(a_run(attempt=3), outcome(exit_code=3), now, 0.5)
    assert last.state is RunState.FAILED and last.next_attempt is None


def test_a_signal_is_shown_as_a_shell_shows_it() -> None:
    done = runs.settle(a_run(), outcome(signal=15), T0, 0.5)
    assert (done.state, done.exit_code, done.signal) == (RunState.FAILED, 143, 15)
    assert done.reason == "killed by signal SIGTERM"
    assert runs.describe_exit(done.exit_code, done.signal) == "143 (SIGTERM)"
    assert runs.describe_exit(0, None) == "0" and runs.describe_exit(None, None) == "-"
    assert runs.signal_name(99) == "signal 99"


def test_the_executors_cause_of_a_signal_is_kept() -> None:
    """An OOM kill inside the job's memory limit says so (the keeper's detail)."""
    oom = runs.settle(
        a_run(),
        outcome(signal=9, detail="killed by signal 9 (SIGKILL): out of memory (memory_max)"),
        T0,
        0.5,
    )
    assert oom.reason == "killed by signal SIGKILL: out of memory (memory_max)"
    plain = runs.settle(a_run(), outcome(signal=9, detail="killed by signal 9 (SIGKILL)"), T0, 0.5)
    assert plain.reason == "killed by signal SIGKILL"


@pytest.mark.parametrize(
    ("ending", "state", "retried"),
    [
        (Ending.TIMED_OUT, RunState.TIMED_OUT, True),
        (Ending.NOT_STARTED, RunState.FAILED, True),
        (Ending.KILLED, RunState.FAILED, False),  # someone wanted it stopped
    ],
)
def test_endings(ending: Ending, state: RunState, retried: bool) -> None:
    done = runs.settle(a_run(), outcome(ending, detail="why"), T0, 0.5)
    assert done.state is state and done.reason == "why"
    assert (done.next_attempt is not None) is retried


def test_a_drained_run_is_interrupted_and_resumes_at_once_without_using_a_retry() -> None:
    done = runs.settle(a_run(attempt=3), outcome(Ending.STOPPED), T0 + s(1), 0.5)
    assert done.state is RunState.INTERRUPTED
    assert done.next_attempt == runs.NextAttempt(T0 + s(1), Trigger.RESUME)


def test_leftovers_and_output_notes_are_in_the_reason() -> None:
    done = runs.settle(
        a_run(),
        outcome(exit_code=0, leftovers=2, output_note="output incomplete: disk full"),
        T0,
        0.5,
    )
    assert done.state is RunState.SUCCEEDED
    assert done.reason == "left 2 processes behind, killed; output incomplete: disk full"


def test_lost_runs_are_retried_by_policy() -> None:
    lost = runs.lose(a_run(), "its scheduler died", T0, 0.5)
    assert (lost.state, lost.reason) == (RunState.LOST, "lost: its scheduler died")
    assert lost.next_attempt == runs.NextAttempt(T0 + s(10), Trigger.RETRY)
    assert runs.lose(a_run(attempt=3), "x", T0, 0.5).next_attempt is None


# ---------------------------------------------------------------- start and end times
CLAIMED = T0 - s(0.02)  # the claim, a moment before the keeper's spawn at T0


@pytest.mark.parametrize(
    "wall_end, duration, recorded_end",
    [
        (T0 + s(5), 5.01, T0 + s(5)),  # no step: the keeper's end as it came
        (T0 + s(5.8), 5.0, T0 + s(5.8)),  # within the tolerance (rounding, skew)
        (T0 - s(7200) + s(20), 20.0, T0 + s(20)),  # stepped back 2 h: never negative
        (T0 + s(7200) + s(45), 45.0, T0 + s(45)),  # stepped forward 2 h: not inflated
        (T0 + s(3), 0.0, T0),  # a run that ended at once, then a step forward
    ],
)
def test_the_recorded_end_follows_the_monotonic_duration_across_clock_steps(
    wall_end: datetime, duration: float, recorded_end: datetime
) -> None:
    done = runs.settle(
        a_run(),
        Outcome(7, Ending.EXITED, wall_end, 0, started_at=T0, duration_s=duration),
        wall_end,
        0.5,
        CLAIMED,
    )
    assert (done.started_at, done.finished_at) == (T0, recorded_end)
    assert done.duration_s(CLAIMED) == (recorded_end - T0).total_seconds() >= 0


def test_times_without_a_duration_or_a_start_never_run_backwards() -> None:
    """An older keeper's outcome (no duration) and a run that never started (no start):
    the wall clock is all there is, kept from ending before the run began."""
    stepped = Outcome(7, Ending.EXITED, T0 - s(7000), 0, started_at=T0)
    assert runs.run_times(stepped, CLAIMED) == (T0, T0)
    refused = Outcome(7, Ending.NOT_STARTED, CLAIMED - s(60))
    assert runs.run_times(refused, CLAIMED) == (None, CLAIMED)
    assert runs.settle(a_run(), refused, T0, 0.5, CLAIMED).duration_s(CLAIMED) == 0.0
    # Stepped back between the claim and the spawn: the start is not before the claim.
    early = Outcome(7, Ending.EXITED, T0 - s(3590), 0, started_at=T0 - s(3600), duration_s=10)
    assert runs.run_times(early, CLAIMED) == (CLAIMED, CLAIMED + s(10))


@given(
    st.floats(-10000, 10000),
    st.floats(0, 10000),
    st.one_of(st.none(), st.floats(-10000, 10000)),
)
def test_a_recorded_duration_is_never_negative(
    end: float, duration: float, claim: float | None
) -> None:
    start, finished = runs.run_times(
        Outcome(7, Ending.EXITED, T0 + s(end), 0, started_at=T0, duration_s=duration),
        None if claim is None else T0 + s(claim),
    )
    assert start is not None and finished >= start
    wall = (finished - start).total_seconds()
    assert abs(wall - duration) <= runs.STEP_TOLERANCE_S + 1e-3


def test_every_settled_state_is_reachable_from_running() -> None:
    for state in (
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.TIMED_OUT,
        RunState.INTERRUPTED,
        RunState.LOST,
    ):
        assert state in ALLOWED[RunState.RUNNING]
    assert RunState.EXPIRED in ALLOWED[RunState.QUEUED]


# ---------------------------------------------------------------- admit

CAPACITY = Capacity(started_at=T0 - timedelta(hours=1), workers=4)
IDLE = JobNow()
SOON = T0 + timedelta(seconds=1)


def admit(
    run: Run, job: JobNow = IDLE, now: datetime = SOON, capacity: Capacity = CAPACITY
) -> Admission:
    return runs.admit(run, job, capacity, now)


def test_a_due_run_of_an_idle_job_starts() -> None:
    assert admit(a_run()).verdict is Verdict.START


@pytest.mark.parametrize(
    ("overlap", "verdict"),
    [(Overlap.SKIP, Verdict.SKIP), (Overlap.QUEUE, Verdict.WAIT), (Overlap.ALLOW, Verdict.START)],
)
def test_overlap_applies_against_runs_in_progress(overlap: Overlap, verdict: Verdict) -> None:
    run = a_run(policy=Policy(overlap=overlap))
    decided = admit(run, JobNow(frozenset({None})))
    assert decided.verdict is verdict
    if verdict is Verdict.SKIP:
        assert decided.reason == "previous run still running"


def test_one_catch_up_set_runs_one_after_another_whatever_the_overlap_policy() -> None:
    run = a_run(batch=99, trigger=Trigger.CATCH_UP, policy=Policy(overlap=Overlap.SKIP))
    assert admit(run, JobNow(frozenset({99}))).verdict is Verdict.WAIT
    # a run in progress from before the catch-up decision is overlapped, as usual
    assert admit(run, JobNow(frozenset({None}))).verdict is Verdict.SKIP


def test_start_deadline_expires_late_runs_with_what_happened() -> None:
    run = a_run(policy=Policy(start_deadline_s=60))
    assert admit(run, now=T0 + s(60)).verdict is Verdict.START
    busy = replace(CAPACITY, saturated=True)
    late = admit(run, now=T0 + s(61), capacity=busy)
    assert late.verdict is Verdict.EXPIRE
    assert late.reason == ("not started within its start deadline (1m): all 4 workers were busy")
    behind = admit(run, now=T0 + s(75))
    assert behind.reason is not None and behind.reason.endswith("the scheduler was 1m 15s behind")
    # A worker free at this claim, but claims filled every worker while it waited (a
    # herd): the workers held it back, not the scheduler (review finding).
    herd = replace(CAPACITY, filled_at=T0 + s(30))
    assert admit(run, now=T0 + s(75), capacity=herd).reason == late.reason
    before = replace(CAPACITY, filled_at=T0 - s(1))  # full only before it came due
    assert (admit(run, now=T0 + s(75), capacity=before).reason or "").endswith("behind")
    fresh = Capacity(started_at=T0 + s(300), workers=4)
    down = admit(run, now=T0 + s(301), capacity=fresh)
    assert down.reason is not None and down.reason.endswith("no scheduler was running")
    forever = a_run(policy=Policy(start_deadline_s=None))
    assert admit(forever, now=T0 + timedelta(days=9)).verdict is Verdict.START


def test_deadline_counts_from_the_end_of_the_run_it_waited_behind() -> None:
    run = a_run(policy=Policy(overlap=Overlap.QUEUE, start_deadline_s=60))
    # held back while the previous run ran for ten minutes: waits, never expires
    assert admit(run, JobNow(frozenset({None})), now=T0 + s(600)).verdict is Verdict.WAIT
    after = JobNow(last_finished_at=T0 + s(600))
    assert admit(run, after, now=T0 + s(610)).verdict is Verdict.START
    assert admit(run, after, now=T0 + s(661)).verdict is Verdict.EXPIRE


def test_a_resumed_run_counts_from_the_schedulers_start() -> None:
    run = a_run(trigger=Trigger.RESUME, policy=Policy(start_deadline_s=60))
    started = Capacity(started_at=T0 + timedelta(hours=2), workers=4)
    assert (
        admit(run, now=T0 + timedelta(hours=2, seconds=5), capacity=started).verdict
        is Verdict.START
    )


# ---------------------------------------------------------------- plan


def every(seconds: float) -> Schedule:
    return every_schedule(f"{seconds}s", T0 - s(seconds))


def test_on_time_occurrence_runs() -> None:
    result = occurrences.plan(HOURLY, Policy(), T0, T0 + s(0.01))
    assert result.to_run == (T0,) and result.skipped == () and result.catch_up == ()
    assert result.next_due == T0 + timedelta(hours=1)


def test_down_for_three_hours_with_each_policy() -> None:
    now = T0 + timedelta(hours=3, minutes=30)
    missed = tuple(T0 + timedelta(hours=h) for h in range(4))
    once = occurrences.plan(HOURLY, Policy(catch_up=CatchUp.ONCE), T0, now)
    assert once.to_run == missed[-1:] == once.catch_up and once.skipped == missed[:-1]
    skip = occurrences.plan(HOURLY, Policy(catch_up=CatchUp.SKIP), T0, now)
    assert skip.to_run == () and skip.skipped == missed
    everything = occurrences.plan(HOURLY, Policy(catch_up=CatchUp.ALL), T0, now)
    assert everything.to_run == missed and everything.batch and everything.skipped == ()
    assert everything.next_due == T0 + timedelta(hours=4)


def test_back_just_in_time_runs_only_the_one_on_time() -> None:
    result = occurrences.plan(HOURLY, Policy(), T0, T0 + timedelta(hours=2, seconds=5))
    assert result.to_run == (T0 + timedelta(hours=2),) and result.catch_up == ()
    assert result.skipped == (T0, T0 + timedelta(hours=1))


def test_an_interval_job_after_a_freeze_does_not_burst() -> None:
    schedule = every(1)
    result = occurrences.plan(schedule, Policy(start_deadline_s=1), T0, T0 + s(5.5))
    assert result.to_run == (T0 + s(5),) and len(result.skipped) == 5


def test_catch_up_all_after_fifteen_seconds_down_runs_every_occurrence() -> None:
    schedule = every(3)
    result = occurrences.plan(
        schedule, Policy(catch_up=CatchUp.ALL, start_deadline_s=3), T0, T0 + s(15.5)
    )
    assert len(result.to_run) == 6 and result.batch and result.skipped == ()


def test_minutely_job_down_two_days_skip_accounts_for_every_occurrence() -> None:
    now = T0 + timedelta(days=2, seconds=30)
    result = occurrences.plan(MINUTELY, Policy(catch_up=CatchUp.SKIP), T0, now)
    assert result.to_run == (T0 + timedelta(days=2),)  # the latest is on time
    assert len(result.skipped) == occurrences.RECORD_CAP
    assert result.uncounted is not None and result.uncounted.count == 2880 - occurrences.RECORD_CAP
    assert result.uncounted.first == T0
    assert result.uncounted.last < result.skipped[0]


def test_interval_job_down_nineteen_minutes_loses_nothing() -> None:
    """The reported case: 1,001 skipped + 1 run recorded, 149 occurrences vanished."""
    schedule = every(1)
    now = T0 + timedelta(minutes=19, seconds=0.5)
    result = occurrences.plan(schedule, Policy(catch_up=CatchUp.ONCE, start_deadline_s=1), T0, now)
    assert len(result.to_run) + result.missed == 1 + 19 * 60


def test_queue_backlog_is_bounded() -> None:
    policy = Policy(overlap=Overlap.QUEUE, max_queued=2)
    result = occurrences.plan(HOURLY, policy, T0, T0 + s(1), queued=2)
    assert result.to_run == () and result.refused == (T0,)
    assert occurrences.plan(HOURLY, policy, T0, T0 + s(1), queued=1).to_run == (T0,)


def test_one_shot_and_manual() -> None:
    one = at_schedule("2026-12-01T09:00:00+00:00", "UTC", T0)
    moment = datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert occurrences.plan(one, Policy(), moment, moment + s(1)).to_run == (moment,)
    late = occurrences.plan(
        one, Policy(catch_up=CatchUp.SKIP, start_deadline_s=60), moment, moment + timedelta(days=1)
    )
    assert late.to_run == () and late.skipped == (moment,) and late.next_due is None
    cap = occurrences.DEFAULT_DEADLINE_CAP
    assert occurrences.default_start_deadline(manual_schedule(), T0) == cap


@given(
    seconds=st.integers(1, 400),
    outage=st.integers(0, 4000),
    catch_up=st.sampled_from(list(CatchUp)),
    deadline=st.sampled_from([None, 1.0, 30.0]),
    overlap=st.sampled_from(list(Overlap)),
    queued=st.integers(0, 12),
)
@settings(max_examples=150, deadline=None)
def test_every_due_occurrence_is_accounted_for(
    seconds: int,
    outage: int,
    catch_up: CatchUp,
    deadline: float | None,
    overlap: Overlap,
    queued: int,
) -> None:
    schedule = every(seconds)
    now = T0 + s(outage * seconds / 7 + 0.5)
    policy = Policy(catch_up=catch_up, start_deadline_s=deadline, overlap=overlap)
    result = occurrences.plan(schedule, policy, T0, now, queued)
    total = 1 + count_between(schedule, T0, now)
    assert len(result.to_run) + len(result.refused) + result.missed == total
    listed = result.to_run + result.skipped + result.refused
    assert len(set(listed)) == len(listed)  # nothing twice
    assert len(result.skipped) <= occurrences.RECORD_CAP
    assert len(result.to_run) <= occurrences.RUN_CAP + 1
    assert result.next_due is not None and result.next_due > now


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (every(90), 90),
        (MINUTELY, 60),
        (HOURLY, 3600),
        (cron_schedule("0 3 * * *", "Europe/Berlin"), occurrences.DEFAULT_DEADLINE_CAP),
    ],
)
def test_default_start_deadline_is_the_period(schedule: Schedule, expected: float) -> None:
    assert occurrences.default_start_deadline(schedule, T0) == expected


# ---------------------------------------------------------------- the wall clock


def test_clock_watch_sees_steps_not_elapsed_time() -> None:
    watch = ClockWatch()
    assert watch.step(100.0, T0) is None
    assert watch.step(160.0, T0 + s(60.3)) is None  # a slow loop, not a step
    back = watch.step(161.0, T0 + s(61.3) - timedelta(minutes=10))
    assert back is not None and round(back.by.total_seconds()) == -600
    forward = watch.step(162.0, T0 + s(62.3) + timedelta(minutes=5))
    assert forward is not None and round(forward.by.total_seconds()) == 900


# ---------------------------------------------------------------- jitter


def test_jitter_moves_every_occurrence_by_a_stable_offset_within_the_window() -> None:
    from pony_scheduler.scheduler.schedule import (
        due_between,
        jitter_offset,
        next_after,
        upcoming,
        with_offset,
    )

    offsets = {name: jitter_offset(name, 300) for name in ("a", "b", "backup", "report")}
    assert all(0 <= off < 300 for off in offsets.values())
    assert len(set(offsets.values())) == len(offsets)  # spread between jobs
    assert jitter_offset("backup", 300) == offsets["backup"]  # stable
    assert jitter_offset("backup", None) == 0.0
    moved = with_offset(HOURLY, offsets["backup"])
    shift = timedelta(seconds=offsets["backup"])
    hour = timedelta(hours=1)
    assert next_after(moved, T0) == T0 + shift  # 12:00 + the job's share
    assert next_after(moved, T0 + shift) == T0 + hour + shift
    assert due_between(moved, T0, T0 + 2 * hour + shift) == [
        T0 + shift,
        T0 + hour + shift,
        T0 + 2 * hour + shift,
    ]
    assert [o.at for o in upcoming(moved, T0, 2)] == [T0 + shift, T0 + hour + shift]
    assert count_between(moved, T0, T0 + 2 * hour) == 2
    one = at_schedule("2026-12-01T09:00:00+00:00", "UTC", T0)
    assert with_offset(one, 60).offset == 0.0  # one-shot times are not moved


def test_a_jitter_window_is_at_most_the_schedules_period() -> None:
    """Only cron and interval schedules move, and by at most their period (for cron, the
    shortest gap between its occurrences): a wider window only delays the first run."""
    from pony_scheduler.scheduler.schedule import (
        check_jitter,
        cron_schedule,
        every_schedule,
        manual_schedule,
    )

    minutely = every_schedule("1m", T0)
    check_jitter(minutely, 60, T0)  # the whole period: every offset spreads
    check_jitter(minutely, None, T0)
    with pytest.raises(ConfigError, match=r"--jitter 2h is longer than the job's period \(1m\)"):
        check_jitter(minutely, 7200, T0)
    weekdays = cron_schedule("0 9 * * 1-5", "Europe/Berlin")  # gaps of 1 and 3 days
    check_jitter(weekdays, 86400, T0)
    with pytest.raises(ConfigError, match=r"use at most 1d$"):
        check_jitter(weekdays, 2 * 86400, T0)
    # Daylight saving's short day does not count: the same answer on any date.
    night = cron_schedule("30 2 * * *", "Europe/Berlin")
    for day in (T0, datetime(2027, 3, 20, 12, tzinfo=UTC), datetime(2027, 10, 25, tzinfo=UTC)):
        check_jitter(night, 86400, day)
    with pytest.raises(ConfigError, match=r"use at most 5m$"):
        check_jitter(cron_schedule("*/5 * * * *", "UTC"), 360, T0)
    for once in (at_schedule("2026-12-01T09:00:00+00:00", "UTC", T0), manual_schedule()):
        with pytest.raises(ConfigError, match="--jitter moves only --cron and --every"):
            check_jitter(once, 60, T0)
        check_jitter(once, None, T0)


def test_the_logged_span_of_missed_occurrences_is_those_not_run() -> None:
    """catch-up all past RUN_CAP: the latest RUN_CAP run, the older ones are skipped, and
    the log's "N occurrence(s) from A to B missed" spans those N, not the runs."""
    from pony_scheduler.scheduler.planning import _span

    schedule = every(1)
    down = occurrences.RUN_CAP + 50
    result = occurrences.plan(
        schedule, Policy(catch_up=CatchUp.ALL, start_deadline_s=1), T0, T0 + s(down + 0.5)
    )
    assert len(result.catch_up) == occurrences.RUN_CAP and result.missed == 50
    first, last = _span(result)
    assert (first, last) == (T0, T0 + s(49))
    assert last < min(result.catch_up)
