"""Start-to-ready of `pb scheduler start` and latency of `pb scheduler stop` (idle, empty).

Method: in one home, cycles of start/stop; `start` returns only once the daemon wrote
READY on the readiness pipe (pid file locked, metadata written, database open and schema
current, work loop running), so its wall time is start-to-ready.  `stop` returns once the
process is gone.  The first start (which creates the database and runs the migrations) is
reported apart from the later ones (median, min-max).  Baseline: `pb --version` in the
same cycle, the cost of any `pb` command before it does anything.  The same start with
100,000 jobs and 1,000,000 runs is in bench_scale.py.
"""

from __future__ import annotations

from common import PB, BenchResult, Daemon, new_home, run_timed


def run(quick: bool) -> BenchResult:
    result = BenchResult("lifecycle")
    cycles = 5 if quick else 11
    home = new_home("life")
    daemon = Daemon(home)
    starts, stops, versions = [], [], []
    try:
        for _ in range(cycles):
            versions.append(run_timed([PB, "--version"], daemon.env).wall * 1000)
            starts.append(daemon.start() * 1000)
            stops.append(daemon.stop() * 1000)
    finally:
        daemon.cleanup()
    result.details.update(starts_ms=starts, stops_ms=stops, version_ms=versions)
    result.add(
        "start, first (creates + migrates the DB)",
        starts[0],
        "ms",
        baseline=versions[0],
        baseline_name="pb --version",
    )
    result.add(
        "start-to-ready",
        starts[1:],
        "ms",
        baseline=versions[1:],
        baseline_name="pb --version",
        goal="< 600 ms",
        check=lambda v: v < 600,
        on_value=True,
        note=f"{cycles - 1} cycles",
    )
    result.add(
        "stop",
        stops,
        "ms",
        baseline=versions,
        baseline_name="pb --version",
        goal="< 300 ms",
        check=lambda v: v < 300,
        on_value=True,
        note=f"{cycles} cycles",
    )
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
