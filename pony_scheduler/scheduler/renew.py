"""`python -m pony_scheduler.scheduler.renew`: one lease renewal for a run keeper.

While no scheduler is connected to it, a host's run keeper starts this process every
lease/3 to keep the leases of the runs it holds (and of those whose outcome waits for the
host's next scheduler) alive, so that another host never rescues a run that is alive
(docs/KEEPER.md, "Leases while no scheduler is connected").  One process per renewal
interval, never one per run; the keeper itself has no database code.

Input, on stdin: one JSON object {"lease_s": 60.0, "runs": [[run_id, epoch], ...]}.  The
database URL comes in the environment variable PONYBUNNY_RENEW_DB (it may hold a
password: never on a command line).  Output, on stdout: one JSON line,
{"renewed": [run ids], "gone": {"run id": "lost at epoch 3", ...}, "until": ISO 8601 UTC}
and exit status 0; or {"error": "one line"} and exit status 1.  Nothing is logged here:
the keeper logs the answer in keeper.log.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

DB_VAR = "PONYBUNNY_RENEW_DB"


def parse_request(raw: bytes) -> tuple[float, list[tuple[int, int]]]:
    """The lease (seconds) and the (run id, epoch) pairs of a request; ValueError."""
    request = json.loads(raw)
    if not isinstance(request, dict):
        raise ValueError("the request must be a JSON object")
    lease, pairs = request.get("lease_s"), request.get("runs")
    if not isinstance(lease, int | float) or isinstance(lease, bool) or not 0 < lease <= 86400:
        raise ValueError(f"lease_s must be seconds, not {lease!r}")
    if not isinstance(pairs, list):
        raise ValueError("runs must be a list of [run id, epoch] pairs")
    held = []
    for pair in pairs:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in pair)
        ):
            raise ValueError(f"not a [run id, epoch] pair: {pair!r}")
        held.append((pair[0], pair[1]))
    return float(lease), held


def renew(url: str, lease: float, held: list[tuple[int, int]]) -> dict[str, Any]:
    """Renew and describe the result as the keeper reads it.  Raises DBAPIError,
    ConfigError (a bad URL), UnsafePath (an SQLite file that fails the StrictModes
    check)."""
    from pony_scheduler.store.engine import make_engine
    from pony_scheduler.store.leases import Leases

    engine = make_engine(url)
    try:
        done = Leases(engine).renew_held(held, lease)
    finally:
        engine.dispose()
    return {
        "renewed": list(done.renewed),
        "gone": {str(run_id): found for run_id, found in done.gone.items()},
        "until": done.until.isoformat(timespec="milliseconds"),
    }


def main() -> int:
    try:
        url = os.environ.get(DB_VAR, "")
        if not url:
            raise ValueError(f"{DB_VAR} is not set")
        lease, held = parse_request(sys.stdin.buffer.read())
        answer = renew(url, lease, held)
    except Exception as exc:  # one line for keeper.log, whatever it was
        from pony_scheduler.store.common import first_line

        text = first_line(exc) or type(exc).__name__
        sys.stdout.write(json.dumps({"error": text}) + "\n")
        return 1
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
