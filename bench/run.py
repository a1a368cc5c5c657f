#!/usr/bin/env python3
"""pony-scheduler benchmarks: one command, one table.

    python bench/run.py [--quick] [--only NAME,...] [--json PATH] [--keep]

First it makes (or reuses) a plain venv in bench/.deps/venv and `pip install`s a snapshot
of this working tree into it, NOT editable: what users get.  Then it runs itself again on
that venv's interpreter, so that every `pb` command, every daemon, every bare baseline and
APScheduler run on the same interpreter and the same install.

Every figure is printed beside a baseline measured in the same run, interleaved with it,
with the ratio and its spread (min-max over trials).  A row whose trials spread too wide
to conclude from is flagged WIDE; nothing is refused.  The machine's load is printed.
Results also go to bench/results.json.  See docs/BENCHMARKS.md for the method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEPS = HERE / ".deps"
VENV = DEPS / "venv"
INNER = "PB_BENCH_INNER"  # set when run.py runs again inside the bench venv

BENCHMARKS = {  # name -> module, in the order they run
    "cli": "bench_cli",
    "lifecycle": "bench_lifecycle",
    "scale": "bench_scale",
    "dispatch": "bench_dispatch",
    "throughput": "bench_throughput",
    "apscheduler": "bench_apscheduler",
    "herd": "bench_herd",
    "idle": "bench_idle",
    "multi_pg": "bench_multi",
    "keeper": "bench_keeper",
}
ALIASES = {
    "multi": "multi_pg",
    "pg": "multi_pg",
    "start": "lifecycle",
    "stop": "lifecycle",
    "aps": "apscheduler",
}


# ------------------------------------------------------------------------------ the venv
def _pip(python: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"bench: pip install {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")


def _snapshot() -> Path:
    """A copy of the working tree to build from (the build leaves nothing in the tree)."""
    target = Path(tempfile.mkdtemp(prefix="pb-bench-src-"))
    ignore = shutil.ignore_patterns(
        ".git",
        ".deps",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        "results*.json",
    )
    for item in ROOT.iterdir():
        if item.name in (".git", "build", "dist") or item.name.endswith(".egg-info"):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, ignore=ignore)
        else:
            shutil.copy2(item, target / item.name)
    return target


def prepare_venv(base_python: str, reinstall: bool = True) -> Path:
    """bench/.deps/venv with this tree installed as users install it; its python."""
    python = VENV / "bin" / "python"
    if python.exists() and _venv_base() != os.path.realpath(base_python):
        print(
            f"bench: {VENV} was made with {_venv_base()}; making it again with {base_python}",
            file=sys.stderr,
        )
        shutil.rmtree(VENV)
    if not python.exists():
        print(f"bench: creating {VENV} with {base_python}", file=sys.stderr)
        subprocess.run([base_python, "-m", "venv", str(VENV)], check=True)
    wanted = hashlib.sha256((ROOT / "setup.cfg").read_bytes()).hexdigest()
    stamp = VENV / ".pb-bench-requirements"
    if reinstall or not stamp.exists():
        src = _snapshot()
        try:
            if not stamp.exists() or stamp.read_text() != wanted:
                print(
                    "bench: installing pony-scheduler[postgresql] and its dependencies",
                    file=sys.stderr,
                )
                _pip(python, f"{src}[postgresql]")
                stamp.write_text(wanted)
            print("bench: pip install (not editable) of the working tree", file=sys.stderr)
            _pip(python, "--no-deps", "--force-reinstall", str(src))
        finally:
            shutil.rmtree(src, ignore_errors=True)
    return python


def _venv_base() -> str:
    """The interpreter bench/.deps/venv was made with (its pyvenv.cfg)."""
    try:
        lines = (VENV / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "executable":
            return os.path.realpath(value.strip())
    return ""


def base_interpreter() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


# ------------------------------------------------------------------------------ the table
def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = _num(value, unit)
    return f"{text} {unit}".rstrip()


def _num(value: float, unit: str = "") -> str:
    if unit == "runs" or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _span(lo: float | None, hi: float | None, unit: str = "", suffix: str = "") -> str:
    if lo is None or hi is None:
        return ""
    return f" [{_num(lo, unit)}-{_num(hi, unit)}{suffix}]"


def table(results: list[Any]) -> str:
    header = (
        "benchmark",
        "metric",
        "value [min-max]",
        "baseline",
        "ratio [min-max]",
        "goal",
        "met",
        "flag",
        "note",
    )
    lines: list[tuple[str, ...]] = [header]
    for res in results:
        if res.skipped:
            lines.append((res.name, "(skipped)", "-", "-", "-", "-", "-", "", res.skipped[:150]))
            continue
        for row in res.rows:
            value = fmt(row.value, row.unit) + _span(row.lo, row.hi, row.unit)
            base = (
                f"{fmt(row.baseline, row.unit)} ({row.baseline_name})"
                if row.baseline is not None
                else "-"
            )
            ratio = (
                f"{row.ratio:.2f}x{_span(row.ratio_lo, row.ratio_hi, suffix='x')}"
                if row.ratio is not None
                else "-"
            )
            met = {True: "yes", False: "NO", None: ""}[row.met]
            lines.append(
                (row.bench, row.metric, value, base, ratio, row.goal, met, row.flag, row.note[:150])
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine(python: str) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return ""

    from importlib.metadata import distributions

    packages = {d.metadata["Name"]: d.version for d in distributions()}
    return {
        "python": platform.python_version(),
        "interpreter": python,
        "base_interpreter": base_interpreter(),
        "packages": packages,
        "install": "pip install . (not editable) into bench/.deps/venv",
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "pony_scheduler", "setup.cfg")),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ------------------------------------------------------------------------------ running
def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_benchmarks(args: argparse.Namespace, names: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    import common

    common.KEEP_HOMES = args.keep
    signal.signal(signal.SIGTERM, _terminate)
    info = machine(sys.executable)
    results: list[common.BenchResult] = []
    began = time.perf_counter()
    try:
        for name in names:
            load = os.getloadavg()[0]
            print(f"== {name} (load {load:.2f}) ...", file=sys.stderr, flush=True)
            module = __import__(BENCHMARKS[name])
            start, jiffies = time.perf_counter(), common.cpu_jiffies()
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
            res.load = (load, os.getloadavg()[0])
            res.busy = common.busy_since(jiffies)
            results.append(res)
            print(
                f"   {name}: {res.seconds:.0f} s, load {res.load[0]:.2f} -> "
                f"{res.load[1]:.2f}, machine CPU busy {res.busy:.0%}",
                file=sys.stderr,
                flush=True,
            )
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
    print(
        f"pony-scheduler benchmarks ({'quick' if args.quick else 'full'}; "
        f"{info['cpus']} CPUs, load {info['loadavg_start'][0]:.2f} -> "
        f"{info['loadavg_end'][0]:.2f}; Python {info['python']} plain install; "
        f"commit {info['commit']}{'+dirty' if info['dirty'] else ''}; "
        f"{info['seconds']:.0f} s)"
    )
    versions = ", ".join(
        f"{name} {info['packages'].get(name, '?')}"
        for name in ("click", "SQLAlchemy", "pony-scheduler")
    )
    print(
        f"pb: {Path(sys.executable).parent / 'pb'} (pip install ., not editable) on "
        f"{info['base_interpreter']}; {versions}"
    )
    print(table(results))
    print(
        "\nload (1-min average at start -> end) and the machine's CPU busy fraction "
        "(everyone's work) per benchmark:"
    )
    print(
        "  " + "; ".join(f"{r.name} {r.load[0]:.1f}->{r.load[1]:.1f} {r.busy:.0%}" for r in results)
    )
    payload = {
        "machine": info,
        "results": [
            {
                "name": r.name,
                "skipped": r.skipped,
                "seconds": round(r.seconds, 1),
                "load": r.load,
                "busy": r.busy,
                "rows": [row.as_dict() for row in r.rows],
                "details": r.details,
            }
            for r in results
        ],
    }
    Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\n(results written to {args.json})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials (~5 minutes, not ~13)")
    parser.add_argument(
        "--only", metavar="NAME,...", help=f"run only these: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=str(HERE / "results.json"),
        help="where to write the results (default bench/results.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    parser.add_argument(
        "--python",
        metavar="PATH",
        default=base_interpreter(),
        help="interpreter for the bench venv (default: this one's base)",
    )
    parser.add_argument(
        "--no-reinstall", action="store_true", help="reuse the install in bench/.deps/venv as it is"
    )
    args = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        wanted = [ALIASES.get(n.strip(), n.strip()) for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BENCHMARKS]
        if unknown:
            parser.error(
                f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
            )
        names = [n for n in BENCHMARKS if n in wanted]
    if os.environ.get(INNER) == str(VENV):
        return run_benchmarks(args, names)
    python = prepare_venv(args.python, reinstall=not args.no_reinstall)
    env = {**os.environ, INNER: str(VENV)}
    env.pop("PYTHONPATH", None)
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *argv], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
