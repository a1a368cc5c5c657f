"""Start-to-ready of `pb scheduler start` and latency of `pb scheduler stop` (idle).

Method: in one home, cycles of start/stop; `start` returns only once the daemon wrote
READY on the readiness pipe (pid file locked, metadata written, database open and schema
current, work loop running), so its wall time is start-to-ready.  `stop` returns once the
process is gone.  The first start (which creates the database and runs the migrations) is
reported apart from the median of the later ones.  Baseline: `pb --version` in the same
rounds, the cost of any `pb` command before it does anything.
"""

from __future__ import annotations

from common import (
    PB_MODULE,
    BenchResult,
    Daemon,
    median,
    new_home,
    run_timed,
)


def run(quick: bool) -> BenchResult:
    result = BenchResult("lifecycle")
    cycles = 4 if quick else 11
    home = new_home("life")
    daemon = Daemon(home)
    starts, stops, versions = [], [], []
    try:
        for _ in range(cycles):
            versions.append(run_timed([*PB_MODULE, "--version"], daemon.env)[0] * 1000)
            starts.append(daemon.start() * 1000)
            stops.append(daemon.stop() * 1000)
    finally:
        daemon.cleanup()
    first, later = starts[0], starts[1:]
    base = median(versions)
    result.details.update(starts_ms=starts, stops_ms=stops, version_ms=versions)
    result.add("start, first (creates + migrates the DB)", first, "ms", baseline=base,
               baseline_name="pb --version")
    value = median(later)
    result.add("start-to-ready, median", value, "ms", baseline=base,
               baseline_name="pb --version", goal="< 600 ms", met=value < 600,
               note=f"median of {len(later)}")
    value = median(stops)
    result.add("stop, median", value, "ms", baseline=base, baseline_name="pb --version",
               goal="< 300 ms", met=value < 300, note=f"median of {len(stops)}")
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
