"""`python -m pony_scheduler.keeper --home HOME`: the keeper process (see daemon.py)."""

import sys

from pony_scheduler.keeper.daemon import main

if __name__ == "__main__":
    sys.exit(main())
