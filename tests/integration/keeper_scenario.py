"""Keeper scenarios that must run somewhere the test process is not: inside a mount
namespace with a tiny tmpfs (`unshare --mount`), or as an unprivileged user.

    python -m tests.integration.keeper_scenario NAME HOME

Starts the keeper of HOME itself (so the keeper lives in the same namespace, as the same
user), plays scenario NAME and prints one JSON object with what it saw.  The test asserts.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from pony_scheduler.keeper.client import KeeperClient
from pony_scheduler.keeper.journal import read_journal
from pony_scheduler.keeper.protocol import Launch, Outcome

ENV = {"PATH": os.environ.get("PATH", os.defpath)}


class Player:
    def __init__(self, home: Path, idle_exit_s: float = 1.0) -> None:
        self.home = home
        self.client = KeeperClient.connect(home, "scenario", idle_exit_s=idle_exit_s)
        self.outcomes: dict[int, Outcome] = {}

    def launch(self, run_id: int, *argv: str, job: str = "job", **kw: Any) -> None:
        self.client.launch(Launch(run_id, argv, f"{self.home}/{job}/{run_id}.log", env=ENV, **kw))

    def wait(self, *run_ids: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not set(run_ids) <= set(self.outcomes):
            if time.monotonic() > deadline:
                raise SystemExit(f"no outcome for {run_ids} in time")
            select.select([self.client], [], [], 0.5)
            for event in self.client.read_events():
                if isinstance(event, Outcome):
                    self.outcomes[event.run_id] = event


def shown(outcome: Outcome) -> dict[str, Any]:
    return {
        "ending": outcome.ending,
        "exit_code": outcome.exit_code,
        "detail": outcome.detail,
        "note": outcome.output_note,
        "output_bytes": outcome.output_bytes,
        "tail_bytes": len(outcome.tail),
        "leftovers": outcome.leftovers,
        "containment": outcome.containment,
        "id": outcome.id,
        "output_path": outcome.output_path,
    }


def marked(keeper_id: str) -> list[int]:
    want = f"PONYBUNNY_KEEPER_ID={keeper_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if want in handle.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def full_runs(home: Path) -> dict[str, Any]:
    """HOME/runs is a 64 KiB tmpfs, HOME/ro a read-only bind mount (made by the caller)."""
    play = Player(home)
    play.launch(1, "sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x; exit 7", job="runs/j")
    play.launch(2, "sh", "-c", "echo hello; exit 0", job="ro/j")
    play.wait(1, 2)
    play.client.ack(o.id for o in play.outcomes.values())
    play.client.release_exit(10)
    return {
        "full": shown(play.outcomes[1]),
        "ro": shown(play.outcomes[2]),
        "stored": (home / "runs/j/1.log").stat().st_size,
    }


def full_journal(home: Path) -> dict[str, Any]:
    """HOME is a small tmpfs: the journal cannot be written until space comes back."""
    play = Player(home, idle_exit_s=0.5)
    filler = home / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # the disk is full
    finally:
        os.close(fd)
    play.launch(1, "sh", "-c", "exit 5", job="runs/j")
    play.wait(1)
    deadline = time.monotonic() + 30
    while (status := play.client.status()).unjournaled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the outcome was sent; its journal write fails
    stuck = {"unjournaled": status.unjournaled, "error": status.journal_error}
    filler.unlink()
    while play.client.status().unjournaled and time.monotonic() < deadline + 30:
        time.sleep(0.05)
    after = play.client.status().unjournaled
    play.client.close()  # not acknowledged: the keeper exits, its journal keeps it
    while (home / "keeper.pid").exists() and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    return {
        "outcome": shown(play.outcomes[1]),
        "stuck": stuck,
        "after": after,
        "journal": [o.run_id for o in read_journal(home)],
        "log": (home / "keeper.log").read_text(),
    }


def unprivileged(home: Path) -> dict[str, Any]:
    """As a user without cgroup rights: the process-group fallback does the work."""
    play = Player(home)
    status = play.client.status()
    (home / "locked" / "j").mkdir(parents=True)
    (home / "locked" / "j").chmod(0o555)
    play.launch(1, "sh", "-c", "sleep 300 & echo helper; exit 0", job="runs/j")
    play.launch(2, "sh", "-c", "setsid sh -c 'sleep 300 &'; sleep 300", job="runs/j", timeout_s=2)
    play.launch(3, "sh", "-c", "echo some output; exit 3", job="locked/j")
    play.launch(4, "true", job="runs/j", memory_max=1 << 30)
    play.wait(1, 2, 3, 4)
    left = marked(play.client.welcome.keeper_id)
    play.client.ack(o.id for o in play.outcomes.values())
    play.client.release_exit(10)
    return {
        "containment": status.containment,
        "note": status.containment_note,
        "outcomes": {k: shown(v) for k, v in play.outcomes.items()},
        "left": left,
        "uid": os.getuid(),
    }


def _session_alive(sid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
                return True
    return False


def reused_kept_session(home: Path) -> dict[str, Any]:
    """In a PID namespace of its own (ns_last_pid steers the next PID), pgroup
    containment: a run's leftovers are kept; once they are gone, a later run's main gets
    the same PID, so its session has the kept one's number.  Its leftovers must be
    killed as any run's; then, the same again with a keeper killed while the later run
    runs: the next keeper must kill that run's processes, not spare them as kept."""
    play = Player(home)
    tries = _reuse_a_kept_session(play, "sleep 300 & echo later", 0)
    left = marked(play.client.welcome.keeper_id)
    crash = _reuse_a_kept_session(play, "sleep 300 & exec sleep 301", 100)
    old_keeper = play.client.welcome.keeper_id
    with open(home / "keeper.pid") as handle:
        os.kill(int(handle.read().split()[0]), 9)
    after = Player(home)  # a new keeper: it cleans up what the dead one left
    deadline = time.monotonic() + 30
    while marked(old_keeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    left_after_crash = marked(old_keeper)
    after.client.release_exit(10)
    return {
        "containment": play.client.welcome.containment,
        "tries": tries,
        "left": left,
        "crash_tries": crash,
        "left_after_crash": left_after_crash,
    }


def _reuse_a_kept_session(play: Player, later_command: str, base: int) -> list[list[Any]]:
    """Keep a run's leftover until it ends, then start `later_command` as the next PID,
    the kept session's; up to 5 tries.  Waits for the later run's outcome unless it
    lives on (it `exec`s a long sleep), then only until the keeper has spawned it."""
    tries: list[list[Any]] = []
    lives_on = "exec sleep" in later_command
    for attempt in range(5):
        kept_id, later_id = base + 10 * attempt + 1, base + 10 * attempt + 2
        play.launch(kept_id, "sh", "-c", "sleep 0.5 & echo kept", leftovers="keep")
        play.wait(kept_id)
        first = play.outcomes[kept_id]
        deadline = time.monotonic() + 30
        while _session_alive(first.pid or 0) and time.monotonic() < deadline:
            time.sleep(0.05)  # the kept sleep ends; its session with it
        with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
            handle.write(str((first.pid or 1) - 1))
        play.launch(later_id, "sh", "-c", later_command)
        if lives_on:
            while not _session_alive(first.pid or 0) and time.monotonic() < deadline:
                time.sleep(0.05)  # spawned (with whatever PID it got)
            tries.append([first.pid, _pid_of_run(later_id), first.leftovers, None])
            if tries[-1][1] == first.pid:
                break
            continue
        play.wait(later_id)
        later = play.outcomes[later_id]
        tries.append([first.pid, later.pid, first.leftovers, later.leftovers])
        if later.pid == first.pid:
            break
    play.client.ack(o.id for o in play.outcomes.values())
    return tries


def _pid_of_run(run_id: int) -> int | None:
    """The main process of run `run_id` (its session leader, marked with its id)."""
    want = f"PONYBUNNY_RUN_ID={run_id}".encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    marks = handle.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    sid = int(handle.read().rsplit(b")", 1)[1].split()[3])
            except OSError:
                continue
            if want in marks and sid == int(entry):
                return sid
        time.sleep(0.05)
    return None


SCENARIOS = {
    "full_runs": full_runs,
    "full_journal": full_journal,
    "unprivileged": unprivileged,
    "reused_kept_session": reused_kept_session,
}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]](Path(sys.argv[2]))
    print(json.dumps(result))
