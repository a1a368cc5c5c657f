"""CLI start-up: `pb --version`, `pb --help` and `pb scheduler status` against the floor.

Method: the plain install's `pb` console script and its own interpreter.  Two baselines
on that same interpreter: `python -c pass` (the interpreter alone) and
`python -c 'import click'` (the floor of any click program: the goal is measured against
it).  Every round runs each command once, in an order of its own (interleaved, so that
drift and neighbours hit all alike); a trial is R rounds, its figure the median; the
ratio of a trial is its median over the same trial's click floor.  Reported: the median
over trials and min-max over trials, for wall time (what users feel) and, in the note,
CPU time of the process (user+system from wait4: less sensitive to a busy machine).
`pb scheduler status` asks a live daemon.
"""

from __future__ import annotations

from common import (
    PB,
    PY,
    BenchResult,
    Daemon,
    clean_env,
    median,
    new_home,
    run_timed,
    running,
    shuffled,
)

FLOOR = "python -c 'import click'"
BARE = "python -c pass"
GOAL = 1.25  # issue 15: <= 1.25x the `import click` floor


def measure(
    commands: dict[str, list[str]], env: dict[str, str], trials: int, rounds: int
) -> dict[str, list[list[tuple[float, float]]]]:
    """name -> per trial, the (wall ms, cpu ms) of each round."""
    for argv in commands.values():  # warm the page cache
        run_timed(argv, env)
    out: dict[str, list[list[tuple[float, float]]]] = {name: [] for name in commands}
    for trial in range(trials):
        for name in commands:
            out[name].append([])
        for rnd in range(rounds):
            for name in shuffled(list(commands), seed=trial * 1000 + rnd):
                timed = run_timed(commands[name], env)
                if timed.code not in (0, 3):  # status of a stopped service exits 3
                    raise RuntimeError(f"{name} exited {timed.code}")
                out[name][-1].append((timed.wall * 1000, timed.cpu * 1000))
    return out


def run(quick: bool) -> BenchResult:
    result = BenchResult("cli")
    trials, rounds = (3, 5) if quick else (5, 7)
    home = new_home("cli")
    env = clean_env(home)
    commands = {
        BARE: [PY, "-c", "pass"],
        FLOOR: [PY, "-c", "import click"],
        "pb --version": [PB, "--version"],
        "pb --help": [PB, "--help"],
        "pb scheduler status": [PB, "scheduler", "status"],
    }
    with running(Daemon(home)):
        samples = measure(commands, env, trials, rounds)
    result.details.update(samples_ms=samples, trials=trials, rounds=rounds, pb=PB)

    def per_trial(name: str, index: int) -> list[float]:
        return [median([s[index] for s in trial]) for trial in samples[name]]

    bare, floor = per_trial(BARE, 0), per_trial(FLOOR, 0)
    bare_cpu, floor_cpu = per_trial(BARE, 1), per_trial(FLOOR, 1)
    result.add(BARE, bare, "ms", note=f"{trials} trials x {rounds} rounds")
    result.add(
        FLOOR, floor, "ms", baseline=bare, baseline_name=BARE, note="the floor of any click program"
    )
    for name in list(commands)[2:]:
        wall, cpu = per_trial(name, 0), per_trial(name, 1)
        vs_bare = [w / b for w, b in zip(wall, bare, strict=True)]
        vs_cpu = [c / f for c, f in zip(cpu, floor_cpu, strict=True)]
        note = (
            f"{median(vs_bare):.2f}x {BARE} [{min(vs_bare):.2f}-{max(vs_bare):.2f}]; "
            f"CPU {median(cpu):.1f} ms = {median(vs_cpu):.2f}x the floor's "
            f"[{min(vs_cpu):.2f}-{max(vs_cpu):.2f}]"
        )
        result.add(
            name,
            wall,
            "ms",
            baseline=floor,
            baseline_name="import click",
            goal=f"<= {GOAL}x import click",
            check=lambda r: r <= GOAL,
            note=note,
        )
    result.details["cpu_ms"] = {name: per_trial(name, 1) for name in commands}
    result.details["bare_cpu_ms"] = bare_cpu
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
