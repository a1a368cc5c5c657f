"""Soak (`pytest -m soak`): a scheduler-like client is kill -9'd again and again while a
keeper runs its jobs.  Every run must end with exactly one outcome (never doubled), every
outcome must reach a client (never lost), and each job must have run once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

from tests.integration.keeper_helpers import kill_keeper, remove_home_groups

pytestmark = pytest.mark.soak
ROOT = Path(__file__).resolve().parents[2]
RUNS = 1500

CLIENT = textwrap.dedent("""
    import os, select, sys
    from pathlib import Path
    from pony_scheduler.keeper.client import KeeperClient
    from pony_scheduler.keeper.protocol import Launch, Outcome
    home, total = Path(sys.argv[1]), int(sys.argv[2])
    ledger = open(home / "ledger", "a")
    c = KeeperClient.connect(home, "soak", idle_exit_s=30)
    seen = {o.run_id for o in c.welcome.outcomes} | {h.run_id for h in c.welcome.runs}

    def record(outcomes):
        for o in outcomes:
            ledger.write(f"{o.run_id} {o.id} {o.ending} {o.exit_code}\\n")
        ledger.flush()
        os.fsync(ledger.fileno())  # recorded before acknowledged, as the scheduler will
        c.ack(o.id for o in outcomes)

    record(c.welcome.outcomes)
    done = set()
    with open(home / "ledger") as f:
        done = {int(line.split()[0]) for line in f}
    todo = [n for n in range(1, total + 1) if n not in done and n not in seen]
    held = len(c.welcome.runs)
    env = {"PATH": os.environ["PATH"]}
    while todo or held:
        while todo and held < 8:
            n = todo.pop(0)
            c.launch(Launch(n, ("sh", "-c", f"echo {n} >> {home}/executed; sleep 0.{n % 5}"
                                ), f"{home}/runs/j/{n}.log", env=env))
            held += 1
        select.select([c], [], [], 1)
        outcomes = [e for e in c.read_events() if isinstance(e, Outcome)]
        held -= len(outcomes)
        record(outcomes)
        if not todo and not held:
            held = len(c.held())
    print("done", flush=True)
""")


def test_clients_killed_at_random_lose_nothing_and_double_nothing(home: Path) -> None:
    rng = random.Random(11)
    kills = 0
    try:
        while True:
            proc = subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(home), str(RUNS)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                proc.wait(timeout=rng.uniform(0.2, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)  # our child: its pid cannot be reused yet
                proc.wait()
                kills += 1
                continue
            assert proc.stdout is not None and proc.stdout.read() == "done\n"
            break
        ledger = defaultdict(set)
        for line in (home / "ledger").read_text().splitlines():
            run_id, outcome_id, ending, code = line.split()
            assert (ending, code) == ("exited", "0"), line
            ledger[int(run_id)].add(outcome_id)
        assert sorted(ledger) == list(range(1, RUNS + 1)), "an outcome was lost"
        assert all(len(ids) == 1 for ids in ledger.values()), "a run had two outcomes"
        executed = [int(n) for n in (home / "executed").read_text().split()]
        assert sorted(executed) == list(range(1, RUNS + 1)), "a job ran twice or never"
        assert kills > 3
        print(f"\n{RUNS} runs, the client killed {kills} times")
    finally:
        kill_keeper(home)
        remove_home_groups(home)
