"""The bare baselines: spawn a command COUNT times with THREADS threads and nothing else.

    python bench/bare.py rate COUNT THREADS -- COMMAND...     # runs/s and CPU per spawn
    python bench/bare.py stamps COUNT THREADS -- COMMAND...   # also when each spawn began

Run by the benchmarks in a fresh process of the bench venv's interpreter (the one `pb`
runs on), so that the baseline pays exactly what the scheduler's workers pay for a spawn:
subprocess.run() of the same argv, waiting for it, output discarded.  Prints one JSON
object: elapsed seconds, runs per second, this process's CPU ms per spawn and, with
`stamps`, the time.time() just before each spawn (unsorted).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main(argv: list[str]) -> None:
    mode, count, threads = argv[0], int(argv[1]), int(argv[2])
    command = argv[argv.index("--") + 1 :]
    stamps: list[float] = []

    def one(_: int) -> None:
        if mode == "stamps":
            stamps.append(time.time())  # list.append is atomic under the GIL
        subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )

    usage = resource.getrusage(resource.RUSAGE_SELF)
    began_wall = time.time()
    began = time.perf_counter()
    if threads == 1:
        for i in range(count):
            one(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(count)))
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    out = {
        "elapsed_s": elapsed,
        "rate": count / elapsed,
        "cpu_ms_per_run": cpu * 1000 / count,
        "began": began_wall,
    }
    if mode == "stamps":
        out["stamps"] = stamps
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
