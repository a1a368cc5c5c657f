"""The run keeper: trivial-job throughput through a live keeper, and the cost of containment.

Throughput: runs of `true` through a real keeper in a temporary home, through its
client exactly as the scheduler uses it (launch, read_events on a selector, ack), with
1, 2 and 4 runs in flight, against the bare spawn loop subprocess.run(['true']) in 1, 2
and 4 threads.  The machine is shared and noisy, so each concurrency is ROUNDS rounds
of a bare chunk then a keeper chunk: the ratio reported is total over total, with the
per-round ratios' median, quartiles and extremes as the spread.  Each containment the machine
allows is measured: cgroup2 (the default here), pgroup, and cgroup2 with a per-run v1
memory group (what a run asking for memory_max costs on a hybrid machine).  The goal:
>= 0.75x the bare loop (issues 11 and 12).

Containment cost: in this process, per run, the steps the keeper adds for a cgroup
(mkdir, moving in and out around posix_spawn, reading cgroup.procs and cpu.stat, rmdir)
against posix_spawn(true) + waitpid alone.

    python bench/bench_keeper.py [--quick]        (or: python bench/run.py --only keeper)
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# After the installed package: measure the install (with its built C part), not the
# source tree, where _spawn is not built in a fresh clone (review finding).
sys.path.append(str(HERE.parent))

from common import BenchResult  # noqa: E402

from pony_scheduler.keeper import cgroups, spawner  # noqa: E402
from pony_scheduler.keeper.client import KeeperClient  # noqa: E402
from pony_scheduler.keeper.containment import Cgroups  # noqa: E402
from pony_scheduler.keeper.protocol import Launch, Outcome  # noqa: E402

ROUNDS = 10
GOAL = 0.75
ENV = {
    "PATH": os.environ.get("PATH", os.defpath),
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "PONYBUNNY_JOB": "t",
}


def bare_rate(count: int, threads: int) -> float:
    """Runs per second of subprocess.run(['true']) in `threads` threads."""
    began = time.perf_counter()
    if threads == 1:
        for _ in range(count):
            subprocess.run(["true"], check=False)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: subprocess.run(["true"], check=False), range(count)))
    return count / (time.perf_counter() - began)


def keeper_rate(
    client: KeeperClient,
    home: Path,
    count: int,
    inflight: int,
    first_id: int,
    memory_max: int | None = None,
) -> float:
    """Runs per second of `true` through the keeper with `inflight` runs at a time."""
    launched = done = 0
    began = time.perf_counter()

    def launch_one() -> None:
        nonlocal launched
        run_id = first_id + launched
        launched += 1
        client.launch(
            Launch(run_id, ("true",), f"{home}/runs/t/{run_id}.log", env=ENV, memory_max=memory_max)
        )

    for _ in range(min(inflight, count)):
        launch_one()
    while done < count:
        select.select([client], [], [], 5)
        finished = [e for e in client.read_events() if isinstance(e, Outcome)]
        for outcome in finished:
            if outcome.ending != "exited" or outcome.exit_code != 0:
                raise RuntimeError(f"run {outcome.run_id}: {outcome.detail}")
        done += len(finished)
        client.ack([o.id for o in finished])
        for _ in finished:
            if launched < count:
                launch_one()
    return count / (time.perf_counter() - began)


def throughput(
    res: BenchResult, label: str, containment: str, count: int, memory_max: int | None = None
) -> None:
    """ROUNDS rounds per concurrency, each a chunk of bare runs then a chunk through the
    keeper, so that both see the same moments of a shared, noisy machine."""
    home = Path(tempfile.mkdtemp(prefix=f"pony-keeper-{containment}-"))
    client = KeeperClient.connect(home, "bench", containment=containment, idle_exit_s=1)
    try:
        got = client.status()
        if got.containment != containment:
            res.add(
                f"{label}: runs/s",
                None,
                "runs/s",
                note=f"{containment} not possible here ({got.containment_note})",
            )
            return
        next_id = 1
        keeper_rate(client, home, 50, 2, 100_000_000, memory_max)  # warm up
        chunk = max(20, count // ROUNDS)
        for inflight in (1, 2, 4):
            ratios, keeper_time, bare_time = [], 0.0, 0.0
            for _ in range(ROUNDS):
                bare = bare_rate(chunk, inflight)
                rate = keeper_rate(client, home, chunk, inflight, next_id, memory_max)
                next_id += chunk
                bare_time += chunk / bare
                keeper_time += chunk / rate
                ratios.append(rate / bare)
            total = chunk * ROUNDS
            ratio = bare_time / keeper_time
            quartiles = statistics.quantiles(ratios, n=4)
            res.add(
                f"{label}: {inflight} in flight",
                total / keeper_time,
                "runs/s",
                baseline=total / bare_time,
                baseline_name=f"subprocess.run x{inflight} thread(s)",
                goal=f">= {GOAL}x",
                met=ratio >= GOAL,
                note=f"{ROUNDS} rounds of {chunk}: per-round ratios median "
                f"{statistics.median(ratios):.2f}, quartiles {quartiles[0]:.2f}-"
                f"{quartiles[2]:.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}",
            )
    finally:
        client.release_exit(10)
        client.close()
        shutil.rmtree(home, ignore_errors=True)


def containment_cost(res: BenchResult, count: int) -> None:
    """Per-run cost of each cgroup step, measured in this process."""
    home = tempfile.mkdtemp(prefix="pony-cgcost-")
    try:
        cg = Cgroups(home, "auto")
    except Exception as exc:
        res.add("containment cost", None, "us", note=f"no cgroups: {exc}")
        return
    if cg.mode != "cgroup2":
        res.add("containment cost", None, "us", note=f"containment here: {cg.mode}")
        return

    def spawn_wait() -> None:
        pid = os.posix_spawn("/usr/bin/true", ["true"], ENV)
        os.waitpid(pid, 0)

    def per_run(step: object) -> float:
        began = time.perf_counter()
        for i in range(count):
            step(i)  # type: ignore[operator]
        return (time.perf_counter() - began) / count * 1e6

    bare = per_run(lambda i: spawn_wait())
    launch = Launch(1, ("true",), f"{home}/x", env=ENV)
    assert cg.v2_parent is not None

    def contained(i: int) -> None:
        box = cg.box(i + 1, launch)
        box.create()
        box.enter()
        try:
            pid = os.posix_spawn("/usr/bin/true", ["true"], ENV)
        finally:
            box.leave()
        os.waitpid(pid, 0)
        box.count()
        box.stats()
        box.remove()

    steps = {
        "mkdir + rmdir": lambda i: (
            os.mkdir(f"{cg.v2_parent}/b{i}"),
            os.rmdir(f"{cg.v2_parent}/b{i}"),
        )
    }
    whole = per_run(contained)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def cloned(i: int) -> None:  # what the keeper does where the C part is built
        box = cg.box(i + 1, launch)
        box.create()
        pid = spawner.start("/usr/bin/true", ("true",), ENV, devnull, devnull, box)
        os.waitpid(pid, 0)
        box.count()
        box.stats()
        box.remove()

    into = per_run(cloned) if spawner.placement() == "clone3" else None
    os.close(devnull)
    res.add("posix_spawn(true) + wait", bare, "us", note="the bare spawn, in this process")
    res.add(
        "cgroup2 run, clone3 into the group: create/spawn/stats/remove",
        into,
        "us",
        baseline=bare,
        baseline_name="bare spawn",
        note=(
            f"containment adds {into - bare:.0f} us per run (what the keeper does)"
            if into is not None
            else "the C part is not built here"
        ),
    )
    res.add(
        "cgroup2 run, moving the spawner: create/enter/spawn/leave/stats/remove",
        whole,
        "us",
        baseline=bare,
        baseline_name="bare spawn",
        note=f"containment adds {whole - bare:.0f} us per run (the fallback)",
    )
    for name, step in steps.items():
        res.add(f"cgroup2 {name}", per_run(step), "us")
    if "memory" in cg.v1:
        mem = Launch(1, ("true",), f"{home}/x", env=ENV, memory_max=1 << 30)

        def with_v1(i: int) -> None:
            box = cg.box(i + 1, mem)
            box.create()
            box.enter()
            try:
                pid = os.posix_spawn("/usr/bin/true", ["true"], ENV)
            finally:
                box.leave()
            box.apply_limits()
            os.waitpid(pid, 0)
            box.stats()
            box.remove()

        cost = per_run(with_v1)
        res.add(
            "cgroup2 + v1 memory run",
            cost,
            "us",
            baseline=bare,
            baseline_name="bare spawn",
            note=f"adds {cost - bare:.0f} us per run",
        )
    for path in filter(None, [cg.v2_parent, *(g.parent for g in cg.v1.values())]):
        with contextlib.suppress(OSError):
            cgroups.remove_group(path)
    shutil.rmtree(home, ignore_errors=True)


def run(quick: bool) -> BenchResult:
    res = BenchResult("keeper")
    count = 300 if quick else 1000
    containment_cost(res, 100 if quick else 300)
    throughput(res, "cgroup2", "cgroup2", count)
    throughput(res, "pgroup", "pgroup", count)
    if not quick:
        throughput(res, "cgroup2 + v1 memory_max", "cgroup2", count, memory_max=1 << 30)
    return res


if __name__ == "__main__":
    import run as runner  # bench/run.py: the same table

    result = run("--quick" in sys.argv)
    print(runner.table([result]))
