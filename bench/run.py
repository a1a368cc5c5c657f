#!/usr/bin/env python3
"""pony-scheduler benchmarks: one command, one table.

    python bench/run.py [--quick] [--only NAME,...] [--json PATH] [--keep]

Every figure is printed beside a baseline measured in the same run and the ratio between
them (this machine is shared and noisy: compare within a run, not across runs).  Results
also go to bench/results.json.  Daemons run in temporary PONYBUNNY_HOMEs and are always
stopped by the PID they wrote, even on Ctrl-C.  See docs/BENCHMARKS.md for the method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

BENCHMARKS = {  # name -> module, in the order they run
    "cli": "bench_cli",
    "lifecycle": "bench_lifecycle",
    "dispatch": "bench_dispatch",
    "throughput": "bench_throughput",
    "idle": "bench_idle",
    "multi_pg": "bench_multi",
    "keeper": "bench_keeper",
}
ALIASES = {"multi": "multi_pg", "pg": "multi_pg", "start": "lifecycle", "stop": "lifecycle"}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "runs" or isinstance(value, int) or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def table(results: list[common.BenchResult]) -> str:
    header = ("benchmark", "metric", "value", "baseline", "ratio", "goal", "met", "note")
    lines: list[tuple[str, ...]] = [header]
    for res in results:
        if res.skipped:
            lines.append((res.name, "(skipped)", "-", "-", "-", "-", "-", res.skipped[:120]))
            continue
        for row in res.rows:
            base = (f"{fmt(row.baseline, row.unit)} ({row.baseline_name})"
                    if row.baseline is not None else "-")
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
            met = {True: "yes", False: "NO", None: ""}[row.met]
            lines.append((row.bench, row.metric, fmt(row.value, row.unit), base, ratio,
                          row.goal, met, row.note[:120]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True,
                                  text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "loadavg_start": os.getloadavg(),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "pony_scheduler")),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (~2 minutes)")
    parser.add_argument("--only", metavar="NAME,...",
                        help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", metavar="PATH", default=str(HERE / "results.json"),
                        help="where to write the results (default bench/results.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        wanted = [ALIASES.get(n.strip(), n.strip()) for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
        names = [n for n in BENCHMARKS if n in wanted]
    common.KEEP_HOMES = args.keep
    signal.signal(signal.SIGTERM, _terminate)

    info = machine()
    results: list[common.BenchResult] = []
    began = time.perf_counter()
    try:
        for name in names:
            print(f"== {name} ...", file=sys.stderr, flush=True)
            module = __import__(BENCHMARKS[name])
            start = time.perf_counter()
            try:
                res = module.run(args.quick)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc()
                res = common.BenchResult(name, skipped=f"failed: {exc}"[:300])
            finally:
                common.cleanup_all()
            res.seconds = time.perf_counter() - start
            results.append(res)
            print(f"   {name}: {res.seconds:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        common.cleanup_all()
        common.remove_homes()
    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = round(time.perf_counter() - began, 1)
    info["quick"] = args.quick
    print()
    print(f"pony-scheduler benchmarks ({'quick' if args.quick else 'full'}; "
          f"{info['cpus']} CPUs, load {info['loadavg_start'][0]:.2f} -> "
          f"{info['loadavg_end'][0]:.2f}; Python {info['python']}; commit {info['commit']}"
          f"{'+dirty' if info['dirty'] else ''}; {info['seconds']:.0f} s)")
    print(table(results))
    payload = {"machine": info,
               "results": [{"name": r.name, "skipped": r.skipped, "seconds": round(r.seconds, 1),
                            "rows": [row.as_dict() for row in r.rows], "details": r.details}
                           for r in results]}
    Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\n(results written to {args.json})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
